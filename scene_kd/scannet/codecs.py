"""Encode and decode the image payloads of ScanNet files (JPEG / PNG color, zlib / PNG depth).

Every decoder takes `where`, a string naming the file (and frame) the bytes came from, so that a
corrupt payload is reported as `ScanNetFormatError("<file> frame 12: ...")`.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from scene_kd.scannet.errors import ScanNetFormatError

# Pillow raises these (or subclasses) for undecodable or truncated images.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def resize_color(color: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 [H, W, 3] to [size[1], size[0], 3] with Pillow's antialiased bilinear filter."""
    if (color.shape[1], color.shape[0]) == tuple(size):
        return color
    return np.asarray(Image.fromarray(color).resize(tuple(size), Image.BILINEAR))


def decode_color(
    data: bytes,
    compression: str,
    size: tuple[int, int],
    where: str,
    target_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode a color payload to uint8 [H, W, 3] RGB.

    compression: "jpeg", "png" or "raw" (W * H * 3 bytes). size: the declared (W, H); a decoded
    image of another size is an error. target_size: (W, H) to return instead; a JPEG is then decoded
    at the smallest DCT scale (1/2, 1/4, 1/8) still at least that large (`Image.draft`, several times
    faster than a full decode) and resized from there.
    """
    width, height = size
    if compression == "raw":
        if len(data) != width * height * 3:
            raise ScanNetFormatError(
                f"{where}: raw color payload has {len(data)} bytes, expected {width}x{height}x3"
            )
        color = np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy()
        return color if target_size is None else resize_color(color, target_size)
    if compression not in ("jpeg", "png"):
        raise ScanNetFormatError(f"{where}: unsupported color compression {compression!r}")
    try:
        image = Image.open(io.BytesIO(data))
        if image.size != (width, height):
            raise ScanNetFormatError(
                f"{where}: color image is {image.size[0]}x{image.size[1]}, expected {width}x{height}"
            )
        if target_size is not None and image.format == "JPEG":
            image.draft("RGB", tuple(target_size))
        image = image.convert("RGB")
        if target_size is not None and image.size != tuple(target_size):
            image = image.resize(tuple(target_size), Image.BILINEAR)
        return np.asarray(image)
    except ScanNetFormatError:
        raise
    except _PIL_ERRORS as e:
        raise ScanNetFormatError(f"{where}: cannot decode {compression} color image: {e}") from e


def decode_depth(data: bytes, compression: str, size: tuple[int, int], where: str) -> np.ndarray:
    """Decode a depth payload to uint16 [H, W].

    compression: "zlib_ushort" (a zlib stream of H * W little-endian uint16), "raw_ushort" (those
    bytes uncompressed) or "png" (a 16-bit PNG). size: the declared (W, H).
    """
    width, height = size
    if compression == "png":
        return decode_png16(data, where, size)
    if compression == "zlib_ushort":
        expected = width * height * 2
        try:
            # bounded: a corrupt stream that would inflate far beyond H x W is cut at one byte more
            # (and reported below) instead of filling memory
            inflater = zlib.decompressobj()
            data = inflater.decompress(data, expected + 1)
        except zlib.error as e:
            raise ScanNetFormatError(f"{where}: cannot inflate zlib depth payload: {e}") from e
        if len(data) <= expected and not inflater.eof:
            raise ScanNetFormatError(f"{where}: cannot inflate zlib depth payload: truncated stream")
    elif compression != "raw_ushort":
        raise ScanNetFormatError(f"{where}: unsupported depth compression {compression!r}")
    if len(data) != width * height * 2:
        raise ScanNetFormatError(
            f"{where}: depth payload has {len(data)} bytes after decoding, expected {width}x{height}x2"
        )
    return np.frombuffer(data, dtype="<u2").reshape(height, width).astype(np.uint16)


def decode_png16(data: bytes, where: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a 16-bit single-channel PNG to uint16 [H, W]; `size` (W, H) is checked when given."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except _PIL_ERRORS as e:
        raise ScanNetFormatError(f"{where}: cannot decode depth PNG: {e}") from e
    if size is not None and image.size != tuple(size):
        raise ScanNetFormatError(
            f"{where}: depth image is {image.size[0]}x{image.size[1]}, expected {size[0]}x{size[1]}"
        )
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(image).astype(np.uint16)
    if image.mode == "I":
        depth = np.asarray(image)
        if depth.min(initial=0) < 0 or depth.max(initial=0) > 65535:
            raise ScanNetFormatError(f"{where}: depth PNG values outside the uint16 range")
        return depth.astype(np.uint16)
    raise ScanNetFormatError(f"{where}: depth PNG has mode {image.mode!r}, expected 16-bit grayscale")


def encode_color(color: np.ndarray, compression: str, jpeg_quality: int = 90) -> bytes:
    """Encode uint8 [H, W, 3] RGB as "jpeg", "png" or "raw" bytes."""
    check_color(color, "color image")
    if compression == "raw":
        return np.ascontiguousarray(color).tobytes()
    buffer = io.BytesIO()
    if compression == "jpeg":
        Image.fromarray(color).save(buffer, format="JPEG", quality=jpeg_quality)
    elif compression == "png":
        Image.fromarray(color).save(buffer, format="PNG", compress_level=1)
    else:
        raise ValueError(f"unsupported color compression {compression!r} (jpeg, png or raw)")
    return buffer.getvalue()


def encode_depth(depth: np.ndarray, compression: str, zlib_level: int = 6) -> bytes:
    """Encode uint16 [H, W] as "zlib_ushort", "raw_ushort" or "png" (16-bit grayscale) bytes."""
    check_depth(depth, "depth image")
    if compression == "png":
        return encode_png16(depth)
    raw = np.ascontiguousarray(depth, dtype="<u2").tobytes()
    if compression == "zlib_ushort":
        return zlib.compress(raw, zlib_level)
    if compression == "raw_ushort":
        return raw
    raise ValueError(f"unsupported depth compression {compression!r} (zlib_ushort, raw_ushort or png)")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


PNG16_COMPRESSIONS = ("rle", "deflate", "none")


def encode_png16(depth: np.ndarray, compression: str = "rle") -> bytes:
    """Encode uint16 [H, W] as a 16-bit grayscale PNG.

    compression: "rle": PNG's Sub filter on every row (difference to the pixel on the left, small
    on smooth depth) and zlib's run-length strategy: ~2x faster than zlib level 1, and on noisy
    depth as small. "deflate": the Sub filter and zlib's default strategy at level 6: smallest on
    smooth depth, ~10x slower. "none": unfiltered stored rows, ~2x the bytes, nearly free to
    write and read. Written directly rather than through Pillow, which takes ~3x longer.
    """
    check_depth(depth, "depth image")
    if compression not in PNG16_COMPRESSIONS:
        raise ValueError(f"PNG compression must be one of {PNG16_COMPRESSIONS}, got {compression!r}")
    height, width = depth.shape
    raw = np.ascontiguousarray(depth, dtype=">u2").view(np.uint8).reshape(height, 2 * width)
    rows = np.empty((height, 2 * width + 1), dtype=np.uint8)
    if compression == "none":
        rows[:, 0] = 0  # filter type None
        rows[:, 1:] = raw
        compressor = zlib.compressobj(0)
    else:
        rows[:, 0] = 1  # filter type Sub
        rows[:, 1:3] = raw[:, :2]
        np.subtract(raw[:, 2:], raw[:, :-2], out=rows[:, 3:])  # modulo 256, as the filter defines
        strategy = zlib.Z_RLE if compression == "rle" else zlib.Z_DEFAULT_STRATEGY
        compressor = zlib.compressobj(6, zlib.DEFLATED, 15, 8, strategy)
    idat = compressor.compress(rows.tobytes()) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)  # 16-bit grayscale, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def check_color(color: np.ndarray, what: str) -> None:
    """Raise ValueError unless `color` is uint8 [H, W, 3]."""
    if color.dtype != np.uint8 or color.ndim != 3 or color.shape[2] != 3:
        raise ValueError(f"{what}: expected uint8 [H, W, 3], got {color.dtype} {list(color.shape)}")


def check_depth(depth: np.ndarray, what: str) -> None:
    """Raise ValueError unless `depth` is uint16 [H, W]."""
    if depth.dtype != np.uint16 or depth.ndim != 2:
        raise ValueError(f"{what}: expected uint16 [H, W], got {depth.dtype} {list(depth.shape)}")
