"""Render RGB-D frames of a synthetic room the way a handheld ScanNet capture looks.

A person walks a smooth loop around the room with the camera at about 1.5 m, looking across the
room and down at the furniture. Depth is ray cast (open3d's Embree `RaycastingScene`, every pixel
of a frame in one call), with a depth-dependent noise, millimetre quantisation and holes (no
return, grazing angles, depth edges, random blobs). Color comes from the same camera at the color
intrinsics: the hit triangle's vertex colors interpolated with the hit's barycentric coordinates,
shaded by a light over the room, with exposure changes, vignetting and sensor noise. A few short
runs of frames carry `-inf` poses (lost tracking), as ScanNet's do. Poses are camera-to-world in
the raw mesh frame, OpenCV camera axes (x right, y down, z forward).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from scene_kd.deps import import_open3d
from scene_kd.scannet.frame_types import RGBDFrame
from scene_kd.synthetic.room import SyntheticRoom

SCANNET_COLOR_SIZE = (1296, 968)
SCANNET_DEPTH_SIZE = (640, 480)
# (fx, fy, cx, cy) of ScanNet's color and depth cameras at the sizes above
SCANNET_COLOR_PINHOLE = (1170.187988, 1170.187988, 647.75, 483.75)
SCANNET_DEPTH_PINHOLE = (577.870605, 577.870605, 319.5, 239.5)
FRAME_PERIOD_US = 33_333  # 30 Hz
MIN_DEPTH, MAX_DEPTH = 0.3, 8.0  # metres the simulated sensor returns


def scaled_intrinsics(
    pinhole: tuple[float, float, float, float], reference: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """A [4, 4] intrinsic matrix for an image of `size` (W, H) taken with the lens of `pinhole` at
    `reference` size: focal lengths scale with the size, principal points as pixel centres do."""
    sx, sy = size[0] / reference[0], size[1] / reference[1]
    fx, fy, cx, cy = pinhole
    k = np.eye(4)
    k[0, 0], k[1, 1] = fx * sx, fy * sy
    k[0, 2], k[1, 2] = (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5
    return k


def color_intrinsics(size: tuple[int, int] = SCANNET_COLOR_SIZE) -> np.ndarray:
    """ScanNet's color intrinsics [4, 4] scaled to `size` (W, H)."""
    return scaled_intrinsics(SCANNET_COLOR_PINHOLE, SCANNET_COLOR_SIZE, size)


def depth_intrinsics(size: tuple[int, int] = SCANNET_DEPTH_SIZE) -> np.ndarray:
    """ScanNet's depth intrinsics [4, 4] scaled to `size` (W, H)."""
    return scaled_intrinsics(SCANNET_DEPTH_PINHOLE, SCANNET_DEPTH_SIZE, size)


def look_at(position: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world [4, 4] of an OpenCV camera (x right, y down, z forward) at `position`
    looking at `target`, with +z world up, rolled by `roll` radians about its viewing axis."""
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = math.cos(roll), math.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, position
    return pose


def camera_path(room: SyntheticRoom, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth camera-to-world poses float64 [T, 4, 4] in the room's aligned frame.

    One loop around the room on an ellipse about 1.1 m off the walls (tall furniture stands against
    the walls and is less deep than that), with a wobble, a height of 1.35-1.6 m that bobs, and a gaze
    that sweeps across the room toward furniture height.
    """
    width, depth, _ = room.size
    rx, ry = max(width / 2 - 1.1, 0.3), max(depth / 2 - 1.1, 0.3)
    s = np.linspace(0.0, 1.0, num_frames, endpoint=False) if num_frames > 1 else np.zeros(1)
    ph = rng.uniform(0.0, 2 * math.pi, 8)
    direction = 1.0 if rng.random() < 0.5 else -1.0
    theta = ph[0] + direction * (2 * math.pi * s + 0.3 * np.sin(2 * math.pi * s + ph[1]))
    x = rx * np.cos(theta) + 0.15 * np.sin(2 * math.pi * 3 * s + ph[2])
    y = ry * np.sin(theta) + 0.15 * np.sin(2 * math.pi * 2 * s + ph[3])
    z = rng.uniform(1.35, 1.6) + 0.05 * np.sin(2 * math.pi * 4 * s + ph[4])
    gaze = theta + math.pi + 0.9 * np.sin(2 * math.pi * 1.5 * s + ph[5])
    tx, ty = 0.7 * width / 2 * np.cos(gaze), 0.7 * depth / 2 * np.sin(gaze)
    tz = 0.6 + 0.4 * np.sin(2 * math.pi * 2.5 * s + ph[6])
    roll = 0.04 * np.sin(2 * math.pi * 3.5 * s + ph[7])
    poses = [
        look_at(np.array([x[i], y[i], z[i]]), np.array([tx[i], ty[i], tz[i]]), float(roll[i]))
        for i in range(num_frames)
    ]
    return np.stack(poses)


def lost_tracking(num_frames: int, rng: np.random.Generator, fraction: float = 0.02) -> np.ndarray:
    """bool [T]: frames whose pose is reported lost, in short runs (1-5 frames), never frame 0.
    At least one frame is lost in any scan of 4 frames or more."""
    lost = np.zeros(num_frames, dtype=bool)
    if num_frames < 4 or fraction <= 0:
        return lost
    target = max(1, round(fraction * num_frames))
    while lost.sum() < target:
        run = int(rng.integers(1, min(5, target) + 1))
        start = int(rng.integers(1, num_frames))
        lost[start : start + run] = True
    return lost


def _pixel_rays(intrinsic: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 [H, W, 3] camera-frame ray directions with z = 1 (so a ray's t is its depth)."""
    w, h = size
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays = np.stack(
        [(u - intrinsic[0, 2]) / intrinsic[0, 0], (v - intrinsic[1, 2]) / intrinsic[1, 1], np.ones_like(u)],
        -1,
    )
    return rays.astype(np.float32)


class FrameRenderer:
    """Ray casts depth and color images of one room.

    color_render_scale: None (default) shades color on the depth camera's rays and resamples it
    to the color camera's intrinsics, so a frame costs one ray cast (ScanNet's color and depth
    cameras see the same field of view; the color image is then about as sharp as a 640 x 480
    render, and real ScanNet color is soft too: motion blur, JPEG). A fraction in (0, 1] instead
    casts separate color rays at that fraction of `color_size` (1.0: every color pixel) and
    resizes up.
    """

    def __init__(
        self,
        room: SyntheticRoom,
        color_size: tuple[int, int] = SCANNET_COLOR_SIZE,
        depth_size: tuple[int, int] = SCANNET_DEPTH_SIZE,
        color_render_scale: float | None = None,
    ):
        o3d = import_open3d()

        if color_render_scale is not None and not 0.0 < color_render_scale <= 1.0:
            raise ValueError(f"color_render_scale must be None or in (0, 1], got {color_render_scale}")
        self._o3d = o3d
        self.color_size, self.depth_size = tuple(color_size), tuple(depth_size)
        self.color_render_scale = color_render_scale
        self.intrinsic_color = color_intrinsics(self.color_size)
        self.intrinsic_depth = depth_intrinsics(self.depth_size)
        self._depth_rays = _pixel_rays(self.intrinsic_depth, self.depth_size)
        if color_render_scale is None:
            self._color_rays = None
            shade_rays = self._depth_rays
        else:
            size = (
                max(1, round(color_size[0] * color_render_scale)),
                max(1, round(color_size[1] * color_render_scale)),
            )
            self._color_rays = shade_rays = _pixel_rays(color_intrinsics(size), size)
        # 1 / ray length (rays have z = 1): a rotation keeps lengths, so this normalises world rays too
        self._depth_inv_len = 1.0 / np.linalg.norm(self._depth_rays, axis=-1)
        self._shade_inv_len = 1.0 / np.linalg.norm(shade_rays, axis=-1)
        self._vignette = (0.82 + 0.18 * self._shade_inv_len**4).astype(np.float32)  # soft cos^4 falloff
        # sensor noise: one fixed field, cropped at a random offset each frame (drawing fresh
        # normals for every pixel would cost half as much as the ray cast)
        h, w = shade_rays.shape[:2]
        self._noise = np.round(np.random.default_rng(12345).normal(0.0, 2.0, (2 * h, 2 * w, 3))).astype(
            np.int16
        )

        self._scene = o3d.t.geometry.RaycastingScene()
        self._scene.add_triangles(
            o3d.core.Tensor(np.ascontiguousarray(room.vertices, dtype=np.float32)),
            o3d.core.Tensor(np.ascontiguousarray(room.faces, dtype=np.uint32)),
        )
        self._num_faces = len(room.faces)
        self._face_table = self._shading_table(room)
        # the first cast builds the BVH: do it now, so that concurrent renders only read the scene
        self._scene.cast_rays(o3d.core.Tensor(np.array([[0, 0, 0, 0, 0, 1]], dtype=np.float32)))

    @staticmethod
    def _shading_table(room: SyntheticRoom) -> np.ndarray:
        """float32 [F + 1, 10] per face: the color of corner 0, corners 1 and 2 minus corner 0 (so
        a hit at barycentric (u, v) has color c0 + u d1 + v d2), and the ambient plus diffuse
        light from a lamp above the room's middle (faces are a few cm across, so one value per
        face is smooth enough). The extra last row is for rays that hit nothing: a plain light
        ceiling, since ScanNet meshes have none."""
        raw_from_aligned = np.linalg.inv(room.axis_alignment)
        lamp = raw_from_aligned[:3, :3] @ np.array([0.0, 0.0, room.size[2] + 0.3]) + raw_from_aligned[:3, 3]
        corners = room.vertices.astype(np.float64)[room.faces]
        normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
        to_lamp = lamp - corners.mean(1)
        to_lamp /= np.linalg.norm(to_lamp, axis=1, keepdims=True)
        light = 0.45 + 0.4 * np.abs((normal * to_lamp).sum(1))
        colors = room.colors.astype(np.float32)[room.faces] / 255.0  # [F, 3 corners, 3]
        table = np.concatenate(
            [colors[:, 0], colors[:, 1] - colors[:, 0], colors[:, 2] - colors[:, 0], light[:, None]], 1
        )
        sky = np.array([[0.9, 0.9, 0.87, 0, 0, 0, 0, 0, 0, 1.0]])
        return np.concatenate([table, sky]).astype(np.float32)

    def _cast(self, rays_cam: np.ndarray, inv_len: np.ndarray, pose: np.ndarray) -> dict[str, np.ndarray]:
        """Cast the camera-frame rays [H, W, 3] (float32, 1 / length `inv_len` [H, W]) from `pose`.
        Hits keyed t (depth, inf = none), prim (triangle), uv (barycentric), cos (|cosine| of
        the incidence angle), each [H, W, ...]."""
        h, w, _ = rays_cam.shape
        rays = np.empty((h * w, 6), dtype=np.float32)
        # einsum: numpy's matmul is several times slower for [N, 3] x [3, 3]
        rays[:, 3:] = np.einsum("nj,kj->nk", rays_cam.reshape(-1, 3), pose[:3, :3].astype(np.float32))
        rays[:, :3] = pose[:3, 3]
        hit = self._scene.cast_rays(self._o3d.core.Tensor.from_numpy(rays))
        normal = hit["primitive_normals"].numpy()
        # |cos| between ray and surface normal (rays are not unit length: divide by their length)
        cos = np.abs(np.einsum("nc,nc->n", normal, rays[:, 3:])).reshape(h, w) * inv_len
        return {
            "t": hit["t_hit"].numpy().reshape(h, w),
            "prim": hit["primitive_ids"].numpy().reshape(h, w),
            "uv": hit["primitive_uvs"].numpy().reshape(h, w, 2),
            "cos": cos,
        }

    def render(
        self, pose: np.ndarray, rng: np.random.Generator, exposure: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(color uint8 [H, W, 3] at `color_size`, depth uint16 [h, w] in mm, 0 = hole) seen from
        camera-to-world `pose` (raw frame)."""
        hit = self._cast(self._depth_rays, self._depth_inv_len, pose)
        depth = self._depth(hit, rng)
        if self._color_rays is None:
            return self._resample_to_color(self._shade(hit, rng, exposure)), depth
        hit = self._cast(self._color_rays, self._shade_inv_len, pose)
        image = self._shade(hit, rng, exposure)
        if (image.shape[1], image.shape[0]) != self.color_size:
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize(self.color_size, Image.BILINEAR))
        return image, depth

    def _depth(self, hit: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        z = hit["t"]
        valid = np.isfinite(z) & (z > MIN_DEPTH) & (z < MAX_DEPTH)
        z = np.where(valid, z, np.float32(0.0))
        # incidence: sensors lose surfaces seen edge-on
        cos = hit["cos"]
        coin = rng.random(z.shape, dtype=np.float32)
        valid &= ~((cos < 0.08) | ((cos < 0.2) & (coin < 0.5)))
        # depth edges: mixed pixels along silhouettes drop out half the time
        edge = np.zeros(z.shape, dtype=bool)
        jump_x = np.abs(np.diff(z, axis=1)) > 0.05 * np.maximum(z[:, 1:], 0.1)
        jump_y = np.abs(np.diff(z, axis=0)) > 0.05 * np.maximum(z[1:], 0.1)
        edge[:, 1:] |= jump_x
        edge[:, :-1] |= jump_x
        edge[1:] |= jump_y
        edge[:-1] |= jump_y
        valid &= ~(edge & (rng.random(z.shape, dtype=np.float32) < 0.5))
        valid &= _blob_holes(z.shape, rng) & (rng.random(z.shape, dtype=np.float32) > 0.004)
        sigma = 0.0012 + 0.0019 * (z - 0.4) ** 2  # Kinect-class axial noise (metres)
        z = z + rng.standard_normal(z.shape, dtype=np.float32) * sigma
        depth_mm = np.where(valid & (z > 0), np.round(z * 1000.0), 0.0)
        return np.clip(depth_mm, 0, 65535).astype(np.uint16)

    def _shade(self, hit: dict[str, np.ndarray], rng: np.random.Generator, exposure: float) -> np.ndarray:
        """uint8 [h, w, 3]: the hit triangles' interpolated vertex colors, lit, on the rays' grid."""
        h, w = hit["t"].shape
        found = np.isfinite(hit["t"]).ravel()
        prim = np.where(found, hit["prim"].ravel(), self._num_faces)
        face = np.take(self._face_table, prim, axis=0)  # one gather a pixel: np.take beats fancy indexing
        uv = hit["uv"].reshape(-1, 2)
        rgb = face[:, 3:6] * uv[:, :1]
        rgb += face[:, 0:3]
        rgb += face[:, 6:9] * uv[:, 1:]
        shade = (face[:, 9] + 0.15 * np.where(found, hit["cos"].ravel(), 0.0)) * (
            self._vignette.ravel() * (255.0 * exposure)
        )
        rgb *= shade[:, None]
        y0, x0 = int(rng.integers(h)), int(rng.integers(w))
        rgb = rgb.reshape(h, w, 3) + self._noise[y0 : y0 + h, x0 : x0 + w]
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)

    def _resample_to_color(self, image: np.ndarray) -> np.ndarray:
        """Resample an image shaded on the depth camera's pixel grid to the color camera: each
        color pixel takes the bilinear value where its ray crosses the depth image."""
        from PIL import Image

        kd, kc = self.intrinsic_depth, self.intrinsic_color
        (w, h), box = self.color_size, []
        for axis, size in ((0, w), (1, h)):
            scale = kd[axis, axis] / kc[axis, axis]
            # depth pixel = scale * (color pixel - c_color) + c_depth, + 1 for the edge padding;
            # PIL's resize box is in coordinates whose pixel centres sit at +0.5
            start = kd[axis, 2] - scale * kc[axis, 2] + 1 + 0.5 * (1 - scale)
            box.append((start, start + scale * size))
        padded = Image.fromarray(np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge"))
        (x0, x1), (y0, y1) = box
        return np.asarray(padded.resize(self.color_size, Image.BILINEAR, box=(x0, y0, x1, y1)))


def _blob_holes(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """bool [h, w], False inside a few random elliptic blobs (dark or specular patches)."""
    h, w = shape
    keep = np.ones(shape, dtype=bool)
    scale = w / 640.0
    for _ in range(int(rng.poisson(1.5))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(3, 25, 2) * scale + 1.0
        y0, y1 = int(max(0, cy - ry)), int(min(h, cy + ry + 1))
        x0, x1 = int(max(0, cx - rx)), int(min(w, cx + rx + 1))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        keep[y0:y1, x0:x1] &= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 > 1.0
    return keep


@dataclass
class CameraTrack:
    """The camera of one scan.

    poses: float64 [T, 4, 4] true camera-to-world in the raw frame (what is rendered);
    lost: bool [T] frames whose reported pose is all -inf; exposure: float64 [T] gain per frame.
    """

    poses: np.ndarray
    lost: np.ndarray
    exposure: np.ndarray


def camera_track(room: SyntheticRoom, num_frames: int, seed: int, lost_fraction: float = 0.02) -> CameraTrack:
    """The walk, the lost-tracking frames and the auto-exposure of a scan of `room`."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    rng = np.random.default_rng([seed, 0])
    poses = np.linalg.inv(room.axis_alignment) @ camera_path(room, num_frames, rng)
    lost = lost_tracking(num_frames, rng, lost_fraction)
    exposure = 1.0 + 0.08 * np.sin(
        2 * math.pi * 2 * np.arange(num_frames) / num_frames + rng.uniform(0, 2 * math.pi)
    )
    return CameraTrack(poses, lost, exposure)


def render_frame(renderer: FrameRenderer, track: CameraTrack, index: int, seed: int) -> RGBDFrame:
    """Frame `index` of a scan. Its noise comes from a generator of its own, so frames can be
    rendered in any order or concurrently and still come out the same."""
    rng = np.random.default_rng([seed, 1, index])
    color, depth = renderer.render(track.poses[index], rng, float(track.exposure[index]))
    reported = np.full((4, 4), -np.inf) if track.lost[index] else track.poses[index]
    return RGBDFrame(color, depth, reported, index * FRAME_PERIOD_US, index * FRAME_PERIOD_US + 1_000)


T = TypeVar("T")


def ordered_map(fn: Callable[[int], T], count: int, workers: int = 1) -> Iterator[T]:
    """fn(0), fn(1), ... fn(count - 1) in order, computed by up to `workers` threads a few items
    ahead (ray casting, numpy, JPEG and zlib release the GIL, so threads overlap)."""
    if workers <= 1:
        yield from map(fn, range(count))
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[T]] = deque()
        for i in range(count):
            pending.append(pool.submit(fn, i))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def render_frames(
    room: SyntheticRoom,
    num_frames: int,
    seed: int,
    *,
    color_size: tuple[int, int] = SCANNET_COLOR_SIZE,
    depth_size: tuple[int, int] = SCANNET_DEPTH_SIZE,
    color_render_scale: float | None = None,
    lost_fraction: float = 0.02,
    workers: int = 1,
) -> Iterator[RGBDFrame]:
    """Yield `num_frames` frames of `room` along a walk around it, in order, one at a time."""
    renderer = FrameRenderer(room, color_size, depth_size, color_render_scale)
    track = camera_track(room, num_frames, seed, lost_fraction)
    yield from ordered_map(lambda i: render_frame(renderer, track, i, seed), num_frames, workers)
