"""Pictures of the transfer experiment: loss curves, the mIoU table as bars, and a pixel-to-point
correspondence overlay. matplotlib is imported inside the functions (Agg backend, no display)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from scene_kd.scannet.atomic import write_bytes_atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _save(figure, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def plot_loss_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike,
                     title: str = "training loss") -> None:
    """One panel per curve {name: (steps, values)}, written as a PNG to `path`."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
    for axis, (name, (steps, values)) in zip(axes[0], curves.items(), strict=True):
        axis.plot(steps, values, lw=1.5)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    _save(figure, path)


def plot_transfer_table(table: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | os.PathLike,
                        title: str = "val mIoU after finetuning with limited labels") -> None:
    """Bars of `summarize`'s table: scratch vs pretrained per label setting, error bars = std over seeds."""
    plt = _pyplot()
    settings = list(table)
    x = np.arange(len(settings))
    figure, axis = plt.subplots(figsize=(1.8 + 1.6 * len(settings), 3.4))
    for offset, init, color in ((-0.18, "scratch", "#9e9e9e"), (0.18, "pretrained", "#1f77b4")):
        means = [table[s].get(init, {}).get("mean", np.nan) for s in settings]
        stds = [table[s].get(init, {}).get("std", 0.0) for s in settings]
        axis.bar(x + offset, means, 0.36, yerr=stds, capsize=3, color=color,
                 label="pretrained (PPKT)" if init == "pretrained" else "from scratch")
    axis.set_xticks(x, settings)
    axis.set_ylabel("val mIoU (%)")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    _save(figure, path)


def correspondence_overlay(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, points: np.ndarray) -> Image.Image:
    """The frame (uint8 [H, W, 3]) beside the same frame with every paired pixel (rows, cols [M])
    painted with the colour of its 3D point (points float [M, 3], x/y/z scaled to red/green/blue
    over their range): when pixels and points correspond, the colours vary smoothly with the
    geometry and follow the objects' edges in the image."""
    image = np.asarray(image, dtype=np.uint8)
    points = np.asarray(points, dtype=np.float64)
    low, high = points.min(0), points.max(0)
    rgb = ((points - low) / np.maximum(high - low, 1e-9) * 255).astype(np.uint8)
    painted = (image.astype(np.float32) * 0.25).astype(np.uint8)
    painted[np.asarray(rows), np.asarray(cols)] = rgb
    height, width = image.shape[:2]
    canvas = Image.new("RGB", (2 * width + 4, height), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    canvas.paste(Image.fromarray(painted), (width + 4, 0))
    return canvas


def save_png(picture: Image.Image, path: str | os.PathLike, scale: int = 1) -> None:
    """Write a Pillow image as PNG (atomic), enlarged `scale` times (nearest neighbour)."""
    if scale != 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
