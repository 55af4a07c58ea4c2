"""ScanNet's exported-frames layout: `color/{i}.jpg|png`, `depth/{i}.png`, `pose/{i}.txt`,
`intrinsic/{intrinsic,extrinsic}_{color,depth}.txt`, with `{i}` the unpadded frame index."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from scene_kd.atomic import write_bytes_atomic
from scene_kd.scannet.codecs import decode_color, decode_png16, encode_color, encode_png16
from scene_kd.scannet.errors import ScanNetFormatError
from scene_kd.scannet.frame_types import FrameSource, RGBDFrame
from scene_kd.scannet.sens import SensFrameSource

INTRINSIC_FILES = ("intrinsic_color", "extrinsic_color", "intrinsic_depth", "extrinsic_depth")


def read_matrix_txt(path: str | os.PathLike, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    """Read a whitespace-separated matrix (one row a line; "-inf" allowed) as float64 `shape`."""
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ScanNetFormatError(f"{path}: not a text matrix file") from e
    try:
        values = np.array([float(v) for v in text.split()], dtype=np.float64)
    except ValueError as e:
        raise ScanNetFormatError(f"{path}: not a matrix of numbers ({e})") from e
    if values.size != shape[0] * shape[1]:
        raise ScanNetFormatError(
            f"{path}: holds {values.size} numbers, expected a {shape[0]}x{shape[1]} matrix"
        )
    return values.reshape(shape)


def write_matrix_txt(path: str | os.PathLike, matrix: np.ndarray) -> None:
    """Write a 2-D matrix one row a line, each number in the shortest text that reads back as the
    same float64 (so float32 values also read back exactly); -inf stays "-inf"."""
    matrix = np.asarray(matrix, dtype=np.float64)
    text = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in matrix)
    write_bytes_atomic(path, text.encode("ascii"))


def _frame_ids(pose_dir: Path) -> list[int]:
    ids = []
    for name in os.listdir(pose_dir):
        stem, ext = os.path.splitext(name)
        if ext == ".txt" and stem.isdigit():
            ids.append(int(stem))
    return sorted(ids)


class ExportedFrameSource:
    """Frames from a directory in ScanNet's exported layout (also what `export_frames` writes and
    what preprocessing stores per scene). The frames are those with a `pose/{i}.txt`; color may be
    `.jpg` or `.png`; depth PNGs hold millimetres (depth_shift 1000); missing extrinsic files mean
    the identity."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        pose_dir = self.root / "pose"
        if not pose_dir.is_dir():
            raise FileNotFoundError(f"{self.root}: no pose/ directory; not an exported-frames directory")
        self.frame_ids = _frame_ids(pose_dir)
        if not self.frame_ids:
            raise ScanNetFormatError(f"{pose_dir}: no frames (no pose/<index>.txt files)")
        matrices = {}
        for name in INTRINSIC_FILES:
            path = self.root / "intrinsic" / f"{name}.txt"
            if name.startswith("extrinsic") and not path.exists():
                matrices[name] = np.eye(4)
            else:
                matrices[name] = read_matrix_txt(path)
                if not np.isfinite(matrices[name]).all():
                    raise ScanNetFormatError(f"{path}: holds non-finite numbers (nan or inf)")
        self.intrinsic_color = matrices["intrinsic_color"]
        self.extrinsic_color = matrices["extrinsic_color"]
        self.intrinsic_depth = matrices["intrinsic_depth"]
        self.extrinsic_depth = matrices["extrinsic_depth"]
        self.depth_shift = 1000.0
        first = self.frame_ids[0]
        self.color_size = self._image_size(self.color_path(first))
        self.depth_size = self._image_size(self.depth_path(first))

    @staticmethod
    def _image_size(path: Path) -> tuple[int, int]:
        try:
            with Image.open(path) as image:
                return image.size
        except FileNotFoundError:
            raise
        except (OSError, SyntaxError, ValueError) as e:
            raise ScanNetFormatError(f"{path}: cannot read image header: {e}") from e

    def color_path(self, frame_id: int) -> Path:
        """`color/{i}.jpg`, or `color/{i}.png` where no jpg exists."""
        jpg = self.root / "color" / f"{frame_id}.jpg"
        if jpg.exists():
            return jpg
        png = self.root / "color" / f"{frame_id}.png"
        if png.exists():
            return png
        raise FileNotFoundError(f"{jpg}: missing color image (no .jpg or .png for frame {frame_id})")

    def depth_path(self, frame_id: int) -> Path:
        """`depth/{i}.png`."""
        return self.root / "depth" / f"{frame_id}.png"

    def pose_path(self, frame_id: int) -> Path:
        """`pose/{i}.txt`."""
        return self.root / "pose" / f"{frame_id}.txt"

    def read_pose(self, frame_id: int) -> np.ndarray:
        """camera_to_world float64 [4, 4] (all -inf where tracking was lost)."""
        return read_matrix_txt(self.pose_path(frame_id))

    def read(self, frame_id: int, color_size: tuple[int, int] | None = None) -> RGBDFrame:
        """Decode one frame; with `color_size` (W, H) the color is returned resized to it."""
        color_path = self.color_path(frame_id)
        compression = "jpeg" if color_path.suffix == ".jpg" else "png"
        color = decode_color(
            color_path.read_bytes(), compression, self.color_size, str(color_path), color_size
        )
        depth_path = self.depth_path(frame_id)
        depth = decode_png16(depth_path.read_bytes(), str(depth_path), self.depth_size)
        return RGBDFrame(color=color, depth=depth, camera_to_world=self.read_pose(frame_id))

    def close(self) -> None:
        """Nothing to release (files are opened per read)."""

    def __enter__(self) -> ExportedFrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def depth_to_millimetres(depth: np.ndarray, depth_shift: float) -> np.ndarray:
    """uint16 depth in 1/depth_shift m -> uint16 millimetres (rounded, saturated at 65535)."""
    if depth_shift == 1000.0:
        return depth
    mm = np.rint(depth.astype(np.float64) * (1000.0 / depth_shift))
    return np.clip(mm, 0, 65535).astype(np.uint16)


def export_frames(
    source: FrameSource,
    out_dir: str | os.PathLike,
    frame_skip: int = 1,
    jpeg_quality: int = 95,
) -> list[int]:
    """Write the frames whose index is a multiple of `frame_skip` in ScanNet's exported layout.

    Returns the frame ids written. Color goes to `color/{i}.jpg` (a `.sens` JPEG payload is copied
    byte for byte, anything else is encoded at `jpeg_quality`), depth to `depth/{i}.png` (16-bit,
    millimetres), poses to `pose/{i}.txt` (rows of -inf where tracking was lost, as ScanNet does),
    and the four matrices to `intrinsic/`. Each file is written atomically.
    """
    out_dir = Path(out_dir)
    for sub in ("color", "depth", "pose", "intrinsic"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    for name in INTRINSIC_FILES:
        write_matrix_txt(out_dir / "intrinsic" / f"{name}.txt", getattr(source, name))
    copy_jpeg = isinstance(source, SensFrameSource) and source.reader.header.color_compression == "jpeg"
    written = []
    for frame_id in source.frame_ids:
        if frame_id % frame_skip:
            continue
        frame = source.read(frame_id)
        if copy_jpeg:
            color_bytes, _ = source.reader.read_payloads(frame_id)
        else:
            color_bytes = encode_color(frame.color, "jpeg", jpeg_quality)
        write_bytes_atomic(out_dir / "color" / f"{frame_id}.jpg", color_bytes)
        depth = depth_to_millimetres(frame.depth, source.depth_shift)
        write_bytes_atomic(out_dir / "depth" / f"{frame_id}.png", encode_png16(depth))
        write_matrix_txt(out_dir / "pose" / f"{frame_id}.txt", frame.camera_to_world)
        written.append(frame_id)
    return written
