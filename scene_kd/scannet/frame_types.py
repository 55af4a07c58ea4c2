"""One RGB-D frame and the interface every frame source (.sens, exported frames) implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class RGBDFrame:
    """One frame of a scan.

    color: uint8 [H, W, 3], RGB.
    depth: uint16 [h, w], in units of 1 / depth_shift metres (ScanNet: millimetres); 0 = no measurement.
    camera_to_world: float32 or float64 [4, 4]; all entries -inf where tracking was lost.
    timestamp_color, timestamp_depth: microseconds (0 where unknown).
    """

    color: np.ndarray
    depth: np.ndarray
    camera_to_world: np.ndarray
    timestamp_color: int = 0
    timestamp_depth: int = 0

    @property
    def pose_valid(self) -> bool:
        """True when every entry of the camera-to-world matrix is finite."""
        return bool(np.isfinite(self.camera_to_world).all())


@runtime_checkable
class FrameSource(Protocol):
    """Read access to the frames of one scan, whatever the storage.

    frame_ids: the frame indices available (indices in the original .sens stream), ascending.
    intrinsic_color, intrinsic_depth: float64 [4, 4] pinhole matrices for color and depth images.
    extrinsic_color, extrinsic_depth: float64 [4, 4] (identity in every ScanNet scan).
    color_size, depth_size: (width, height) of the color and depth images.
    depth_shift: stored depth value per metre (1000.0 for millimetres).
    """

    frame_ids: list[int]
    intrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray
    extrinsic_color: np.ndarray
    extrinsic_depth: np.ndarray
    color_size: tuple[int, int]
    depth_size: tuple[int, int]
    depth_shift: float

    def read(self, frame_id: int, color_size: tuple[int, int] | None = None) -> RGBDFrame:
        """Decode one frame; with `color_size` (W, H) the color image is returned resized to it."""
        ...

    def read_pose(self, frame_id: int) -> np.ndarray:
        """The camera-to-world matrix [4, 4] of one frame, without decoding any image."""
        ...

    def close(self) -> None:
        """Release open files."""
        ...
