"""Read and write ScanNet `.sens` files (version 4).

Layout (little-endian, no padding): a header (version, sensor name, four 4x4 float32 matrices,
color / depth compression, image sizes, depth shift, frame count; 304 + len(name) bytes), then per
frame a 96-byte fixed part (camera_to_world 16 x float32, timestamp_color, timestamp_depth,
color byte count, depth byte count as 4 x uint64) followed by the color and depth payloads, then an
IMU record count (uint64) and that many 128-byte IMU records. See ../../docs/data_format.md.

`SensReader` indexes the file by reading only each frame's fixed part and seeking past payloads,
so opening a 5,000-frame scan reads ~0.5 MB and any frame can then be decoded on its own.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from scene_kd.atomic import StagedPath
from scene_kd.scannet.codecs import (
    check_color,
    check_depth,
    decode_color,
    decode_depth,
    encode_color,
    encode_depth,
)
from scene_kd.scannet.errors import ScanNetFormatError
from scene_kd.scannet.frame_types import RGBDFrame

SENS_VERSION = 4
COLOR_COMPRESSION = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
_COLOR_CODE = {name: code for code, name in COLOR_COMPRESSION.items()}
_DEPTH_CODE = {name: code for code, name in DEPTH_COMPRESSION.items()}

_MATRICES = struct.Struct("<64f")  # intrinsic_color, extrinsic_color, intrinsic_depth, extrinsic_depth
_HEADER_TAIL = struct.Struct("<ii4IfQ")  # compressions, 4 sizes, depth shift, frame count
_FRAME_FIXED = struct.Struct("<16f4Q")  # pose, timestamp_color, timestamp_depth, color bytes, depth bytes
_MAX_NAME_LENGTH = 1 << 16
_MAX_IMAGE_SIDE = 1 << 14  # 16384 pixels: ScanNet's are 1296 x 968 and 640 x 480
_RAW_BYTES_PER_PIXEL = {"raw": 3, "raw_ushort": 2}  # a raw payload's exact size per pixel


@dataclass
class SensHeader:
    """Every field of a `.sens` header.

    intrinsic_* / extrinsic_*: float64 [4, 4] (stored as float32, row-major).
    color_compression: "unknown", "raw", "png" or "jpeg"; depth_compression: "unknown",
    "raw_ushort", "zlib_ushort" or "occi_ushort". depth_shift: stored depth value per metre.
    header_size: bytes before the first frame (304 + len(sensor_name)).
    """

    version: int
    sensor_name: str
    intrinsic_color: np.ndarray
    extrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray
    extrinsic_depth: np.ndarray
    color_compression: str
    depth_compression: str
    color_width: int
    color_height: int
    depth_width: int
    depth_height: int
    depth_shift: float
    num_frames: int
    header_size: int

    @property
    def color_size(self) -> tuple[int, int]:
        """(width, height) of the color images."""
        return (self.color_width, self.color_height)

    @property
    def depth_size(self) -> tuple[int, int]:
        """(width, height) of the depth images."""
        return (self.depth_width, self.depth_height)


def _read_exact(f: BinaryIO, n: int, path: Path, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ScanNetFormatError(f"{path}: file truncated in {what} (needed {n} bytes, got {len(data)})")
    return data


def _parse_header(f: BinaryIO, path: Path) -> SensHeader:
    """Read and check the header; every count and size is checked against the file's size before
    anything is allocated from it (see `_check_header`)."""
    file_size = os.fstat(f.fileno()).st_size
    (version,) = struct.unpack("<I", _read_exact(f, 4, path, "the header"))
    if version != SENS_VERSION:
        raise ScanNetFormatError(f"{path}: .sens version {version}, only version {SENS_VERSION} is supported")
    (name_length,) = struct.unpack("<Q", _read_exact(f, 8, path, "the header"))
    if name_length > min(_MAX_NAME_LENGTH, file_size):
        raise ScanNetFormatError(
            f"{path}: sensor name length {name_length} is implausible for a file of {file_size} bytes; "
            "not a .sens file?"
        )
    name = _read_exact(f, name_length, path, "the header").decode("utf-8", errors="replace")
    matrices = np.array(
        _MATRICES.unpack(_read_exact(f, _MATRICES.size, path, "the header")), dtype=np.float64
    )
    matrices = matrices.reshape(4, 4, 4)
    color_code, depth_code, cw, ch, dw, dh, shift, count = _HEADER_TAIL.unpack(
        _read_exact(f, _HEADER_TAIL.size, path, "the header")
    )
    if color_code not in COLOR_COMPRESSION or depth_code not in DEPTH_COMPRESSION:
        raise ScanNetFormatError(
            f"{path}: unknown compression codes color={color_code} depth={depth_code} in the header"
        )
    header = SensHeader(
        version=version,
        sensor_name=name,
        intrinsic_color=matrices[0],
        extrinsic_color=matrices[1],
        intrinsic_depth=matrices[2],
        extrinsic_depth=matrices[3],
        color_compression=COLOR_COMPRESSION[color_code],
        depth_compression=DEPTH_COMPRESSION[depth_code],
        color_width=cw,
        color_height=ch,
        depth_width=dw,
        depth_height=dh,
        depth_shift=float(shift),
        num_frames=count,
        header_size=f.tell(),
    )
    _check_header(header, file_size, path)
    return header


def _check_header(header: SensHeader, file_size: int, path: Path) -> None:
    """Raise ScanNetFormatError for a header no real scan has: a frame count the file cannot hold
    (each frame takes at least its 96-byte fixed part, and a raw payload its exact pixel bytes),
    image sides of 0 or above 16384, a depth shift that is not a positive number, or non-finite
    camera matrices. Checked before the frame index (sized by the frame count) is allocated."""
    body = file_size - header.header_size
    sizes = {"color": header.color_size, "depth": header.depth_size}
    for what, (width, height) in sizes.items():
        if not (0 < width <= _MAX_IMAGE_SIDE and 0 < height <= _MAX_IMAGE_SIDE):
            raise ScanNetFormatError(
                f"{path}: header declares {what} images of {width} x {height} pixels; expected sides "
                f"in 1..{_MAX_IMAGE_SIDE}: a corrupt header or not a .sens file"
            )
    per_frame = _FRAME_FIXED.size
    for what, compression in (("color", header.color_compression), ("depth", header.depth_compression)):
        width, height = sizes[what]
        per_frame += width * height * _RAW_BYTES_PER_PIXEL.get(compression, 0)
    if header.num_frames * per_frame > body:
        raise ScanNetFormatError(
            f"{path}: header declares {header.num_frames} frames, which need at least "
            f"{header.num_frames * per_frame} bytes ({per_frame} a frame), but only {body} bytes follow "
            "the header: a corrupt header or a truncated file"
        )
    if not (np.isfinite(header.depth_shift) and header.depth_shift > 0):
        raise ScanNetFormatError(f"{path}: depth shift {header.depth_shift} in the header; expected > 0")
    for name in ("intrinsic_color", "extrinsic_color", "intrinsic_depth", "extrinsic_depth"):
        if not np.isfinite(getattr(header, name)).all():
            raise ScanNetFormatError(f"{path}: {name} in the header holds non-finite numbers")


def read_sens_header(path: str | os.PathLike) -> SensHeader:
    """Read only the header of a `.sens` file."""
    path = Path(path)
    with open(path, "rb") as f:
        return _parse_header(f, path)


class SensReader:
    """Random access to the frames of a `.sens` file.

    Opening reads the header and indexes every frame (its pose, timestamps and payload offsets)
    without reading any payload; a truncated file is reported then, naming the first incomplete
    frame. Use as a context manager or call `close()`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file: BinaryIO = open(self.path, "rb")
        try:
            self.header = _parse_header(self._file, self.path)
            self._build_index()
        except BaseException:
            self._file.close()
            raise

    def _build_index(self) -> None:
        n = self.header.num_frames
        file_size = os.fstat(self._file.fileno()).st_size
        self.poses = np.empty((n, 4, 4), dtype=np.float32)
        self.timestamps = np.empty((n, 2), dtype=np.uint64)
        self._payload_offsets = np.empty(n, dtype=np.int64)
        self._payload_sizes = np.empty((n, 2), dtype=np.int64)
        offset = self.header.header_size
        f = self._file
        for i in range(n):
            if offset + _FRAME_FIXED.size > file_size:
                raise ScanNetFormatError(
                    f"{self.path}: truncated at frame {i} of {n}: the file ends at byte {file_size}, "
                    f"inside or before the frame's 96-byte fixed part at byte {offset}"
                )
            f.seek(offset)
            values = _FRAME_FIXED.unpack(f.read(_FRAME_FIXED.size))
            color_bytes, depth_bytes = values[18], values[19]
            end = offset + _FRAME_FIXED.size + color_bytes + depth_bytes
            if end > file_size:
                raise ScanNetFormatError(
                    f"{self.path}: truncated at frame {i} of {n}: its payloads end at byte {end} "
                    f"but the file has {file_size} bytes"
                )
            self.poses[i] = np.array(values[:16], dtype=np.float32).reshape(4, 4)
            self.timestamps[i] = values[16:18]
            self._payload_offsets[i] = offset + _FRAME_FIXED.size
            self._payload_sizes[i] = (color_bytes, depth_bytes)
            offset = end

    def __len__(self) -> int:
        return self.header.num_frames

    def __enter__(self) -> SensReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def _check_index(self, i: int) -> int:
        if not 0 <= i < len(self):
            raise IndexError(f"{self.path}: frame {i} out of range (the file has {len(self)} frames)")
        return int(i)

    def read_pose(self, i: int) -> np.ndarray:
        """camera_to_world float32 [4, 4] of frame i (all -inf where tracking was lost); no decoding."""
        return self.poses[self._check_index(i)].copy()

    def read_payloads(self, i: int) -> tuple[bytes, bytes]:
        """The still-encoded (color bytes, depth bytes) of frame i."""
        i = self._check_index(i)
        color_bytes, depth_bytes = (int(s) for s in self._payload_sizes[i])
        self._file.seek(int(self._payload_offsets[i]))
        data = self._file.read(color_bytes + depth_bytes)
        if len(data) != color_bytes + depth_bytes:
            raise ScanNetFormatError(f"{self.path}: frame {i}: file shorter than when it was opened")
        return data[:color_bytes], data[color_bytes:]

    def read_frame(self, i: int, color_size: tuple[int, int] | None = None) -> RGBDFrame:
        """Decode frame i. With `color_size` (W, H) the color image is decoded at reduced size
        (JPEG DCT scaling, then an antialiased resize) instead of full resolution."""
        color_data, depth_data = self.read_payloads(i)
        where = f"{self.path} frame {i}"
        color = decode_color(
            color_data, self.header.color_compression, self.header.color_size, where, target_size=color_size
        )
        depth = decode_depth(depth_data, self.header.depth_compression, self.header.depth_size, where)
        return RGBDFrame(
            color=color,
            depth=depth,
            camera_to_world=self.poses[i].copy(),
            timestamp_color=int(self.timestamps[i, 0]),
            timestamp_depth=int(self.timestamps[i, 1]),
        )


def _as_matrix4(matrix: np.ndarray | None, what: str) -> np.ndarray:
    """A [4, 4] float64 matrix from a [4, 4] or [3, 3] one (identity for None)."""
    if matrix is None:
        return np.eye(4)
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape == (3, 3):
        full = np.eye(4)
        full[:3, :3] = matrix
        return full
    if matrix.shape != (4, 4):
        raise ValueError(f"{what}: expected a [4, 4] or [3, 3] matrix, got {list(matrix.shape)}")
    return matrix


class SensWriter:
    """Stream frames into a new `.sens` file.

    The file is written under a temporary name; `close()` writes the frame count into the header,
    appends an IMU count of 0 and renames the file into place. Leaving the `with` block by an
    exception (or calling `abort()`) deletes the temporary file, so no partial `.sens` remains.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        color_size: tuple[int, int],
        depth_size: tuple[int, int],
        intrinsic_color: np.ndarray,
        intrinsic_depth: np.ndarray,
        extrinsic_color: np.ndarray | None = None,
        extrinsic_depth: np.ndarray | None = None,
        depth_shift: float = 1000.0,
        color_compression: str = "jpeg",
        depth_compression: str = "zlib_ushort",
        sensor_name: str = "StructureSensor",
        jpeg_quality: int = 90,
        depth_zlib_level: int = 6,
    ):
        if color_compression not in ("jpeg", "png", "raw"):
            raise ValueError(f"color_compression must be jpeg, png or raw, got {color_compression!r}")
        if depth_compression not in ("zlib_ushort", "raw_ushort"):
            raise ValueError(
                f"depth_compression must be zlib_ushort or raw_ushort, got {depth_compression!r}"
            )
        self.path = Path(path)
        self.color_size = (int(color_size[0]), int(color_size[1]))
        self.depth_size = (int(depth_size[0]), int(depth_size[1]))
        self.color_compression = color_compression
        self.depth_compression = depth_compression
        self.jpeg_quality = jpeg_quality
        self.depth_zlib_level = depth_zlib_level
        self.num_frames = 0
        name = sensor_name.encode("utf-8")
        matrices = np.stack(
            [
                _as_matrix4(intrinsic_color, "intrinsic_color"),
                _as_matrix4(extrinsic_color, "extrinsic_color"),
                _as_matrix4(intrinsic_depth, "intrinsic_depth"),
                _as_matrix4(extrinsic_depth, "extrinsic_depth"),
            ]
        ).astype("<f4")
        self._count_offset = 4 + 8 + len(name) + _MATRICES.size + _HEADER_TAIL.size - 8
        self._staged = StagedPath(self.path)
        self._file: BinaryIO | None = open(self._staged.tmp, "wb")
        try:
            self._file.write(struct.pack("<IQ", SENS_VERSION, len(name)) + name + matrices.tobytes())
            self._file.write(
                _HEADER_TAIL.pack(
                    _COLOR_CODE[color_compression],
                    _DEPTH_CODE[depth_compression],
                    *self.color_size,
                    *self.depth_size,
                    depth_shift,
                    0,  # frame count, patched by close()
                )
            )
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> SensWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write_encoded_frame(
        self,
        camera_to_world: np.ndarray,
        color_bytes: bytes,
        depth_bytes: bytes,
        timestamp_color: int = 0,
        timestamp_depth: int = 0,
    ) -> None:
        """Append one frame whose payloads are already encoded in the file's compressions."""
        if self._file is None:
            raise ValueError(f"{self.path}: writer already closed")
        pose = np.asarray(camera_to_world, dtype="<f4")
        if pose.shape != (4, 4):
            raise ValueError(
                f"{self.path} frame {self.num_frames}: camera_to_world must be [4, 4], got {list(pose.shape)}"
            )
        self._file.write(
            _FRAME_FIXED.pack(
                *pose.ravel().tolist(), timestamp_color, timestamp_depth, len(color_bytes), len(depth_bytes)
            )
        )
        self._file.write(color_bytes)
        self._file.write(depth_bytes)
        self.num_frames += 1

    def write_frame(self, frame: RGBDFrame) -> None:
        """Encode and append one frame; its image sizes must match the header's."""
        where = f"{self.path} frame {self.num_frames}"
        check_color(frame.color, where)
        check_depth(frame.depth, where)
        color_size = (frame.color.shape[1], frame.color.shape[0])
        depth_size = (frame.depth.shape[1], frame.depth.shape[0])
        if color_size != self.color_size or depth_size != self.depth_size:
            raise ValueError(
                f"{where}: color {color_size} / depth {depth_size} differ from the first frame's "
                f"{self.color_size} / {self.depth_size}"
            )
        self.write_encoded_frame(
            frame.camera_to_world,
            encode_color(frame.color, self.color_compression, self.jpeg_quality),
            encode_depth(frame.depth, self.depth_compression, self.depth_zlib_level),
            frame.timestamp_color,
            frame.timestamp_depth,
        )

    def close(self) -> int:
        """Finish the file (frame count, IMU trailer), rename it into place; returns the frame count."""
        if self._file is None:
            return self.num_frames
        try:
            self._file.write(struct.pack("<Q", 0))  # no IMU records
            self._file.seek(self._count_offset)
            self._file.write(struct.pack("<Q", self.num_frames))
            self._file.close()
            self._file = None
            self._staged.commit()
        except BaseException:
            self.abort()
            raise
        return self.num_frames

    def abort(self) -> None:
        """Discard the temporary file; nothing is written under `path`."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._staged.discard()


def write_sens(
    path: str | os.PathLike,
    frames: Iterable[RGBDFrame],
    *,
    intrinsic_color: np.ndarray,
    intrinsic_depth: np.ndarray,
    extrinsic_color: np.ndarray | None = None,
    extrinsic_depth: np.ndarray | None = None,
    depth_shift: float = 1000.0,
    color_compression: str = "jpeg",
    depth_compression: str = "zlib_ushort",
    sensor_name: str = "StructureSensor",
    jpeg_quality: int = 90,
    depth_zlib_level: int = 6,
) -> int:
    """Write `frames` as a version-4 `.sens` file and return the number of frames written.

    Frames are consumed one at a time (a generator of thousands of frames never sits in memory).
    The color and depth sizes come from the first frame; a later frame of another size is a
    ValueError and leaves no file. intrinsic_*/extrinsic_*: [4, 4] or [3, 3]; extrinsics default
    to the identity. color_compression: "jpeg" (what ScanNet ships), "png" or "raw";
    depth_compression: "zlib_ushort" (what ScanNet ships) or "raw_ushort".
    """
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    check_color(first.color, f"{path} frame 0")
    check_depth(first.depth, f"{path} frame 0")
    with SensWriter(
        path,
        color_size=(first.color.shape[1], first.color.shape[0]),
        depth_size=(first.depth.shape[1], first.depth.shape[0]),
        intrinsic_color=intrinsic_color,
        intrinsic_depth=intrinsic_depth,
        extrinsic_color=extrinsic_color,
        extrinsic_depth=extrinsic_depth,
        depth_shift=depth_shift,
        color_compression=color_compression,
        depth_compression=depth_compression,
        sensor_name=sensor_name,
        jpeg_quality=jpeg_quality,
        depth_zlib_level=depth_zlib_level,
    ) as writer:
        writer.write_frame(first)
        for frame in iterator:
            writer.write_frame(frame)
    return writer.num_frames


class SensFrameSource:
    """The `FrameSource` view of a `.sens` file: frame ids 0 .. N-1, float64 matrices, poses as
    stored (float32). `reader` is the underlying `SensReader`."""

    def __init__(self, path: str | os.PathLike):
        self.reader = SensReader(path)
        header = self.reader.header
        self.path = self.reader.path
        self.frame_ids = list(range(len(self.reader)))
        self.intrinsic_color = header.intrinsic_color
        self.extrinsic_color = header.extrinsic_color
        self.intrinsic_depth = header.intrinsic_depth
        self.extrinsic_depth = header.extrinsic_depth
        self.color_size = header.color_size
        self.depth_size = header.depth_size
        self.depth_shift = header.depth_shift

    def read(self, frame_id: int, color_size: tuple[int, int] | None = None) -> RGBDFrame:
        """Decode one frame; with `color_size` (W, H) the color is decoded at reduced size."""
        return self.reader.read_frame(frame_id, color_size=color_size)

    def read_pose(self, frame_id: int) -> np.ndarray:
        """camera_to_world float32 [4, 4] from the index; no decoding."""
        return self.reader.read_pose(frame_id)

    def close(self) -> None:
        """Close the `.sens` file."""
        self.reader.close()

    def __enter__(self) -> SensFrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
