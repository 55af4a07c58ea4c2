"""The error raised for a ScanNet file that exists but does not match its format."""


class ScanNetFormatError(ValueError):
    """A ScanNet file is malformed, truncated or inconsistent with another file of its scene.

    The message always starts with the offending path and says what is wrong.
    """
