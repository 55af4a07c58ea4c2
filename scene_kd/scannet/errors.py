"""The error raised for a ScanNet file that exists but does not match its format, and the one way
the readers read a text file (so that a file in another encoding is that error, naming the file)."""

from __future__ import annotations

from pathlib import Path


class ScanNetFormatError(ValueError):
    """A ScanNet file is malformed, truncated or inconsistent with another file of its scene.

    The message always starts with the offending path and says what is wrong.
    """


def read_utf8_text(path: str | Path, what: str) -> str:
    """The text of `path`, decoded as UTF-8 (a leading byte-order mark is dropped).

    what: what the file should be ("segments file", "label tsv", ...), for the message. A file that
    is not UTF-8 raises ScanNetFormatError naming it and the first bad byte; a missing file is
    Python's FileNotFoundError, which names it.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ScanNetFormatError(
            f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            f"expected a {what}; re-save it as UTF-8"
        ) from None
