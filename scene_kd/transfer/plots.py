"""Pictures of the transfer experiment: loss curves, the mIoU table as bars, and a pixel-to-point
correspondence overlay. matplotlib is imported inside the functions (Agg backend, no display)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from scene_kd.atomic import write_bytes_atomic


def pyplot_agg():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def save_figure(figure, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    pyplot_agg().close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def plot_loss_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike,
                     title: str = "training loss") -> None:
    """One panel per curve {name: (steps, values)}, written as a PNG to `path`."""
    plt = pyplot_agg()
    figure, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
    for axis, (name, (steps, values)) in zip(axes[0], curves.items(), strict=True):
        axis.plot(steps, values, lw=1.5)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    save_figure(figure, path)


def plot_transfer_table(table: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | os.PathLike,
                        title: str = "val mIoU after finetuning with limited labels") -> None:
    """Bars of `summarize`'s table: scratch vs pretrained per label setting, error bars = std over seeds."""
    plt = pyplot_agg()
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
    save_figure(figure, path)


def position_colors(points: np.ndarray) -> np.ndarray:
    """uint8 [M, 3]: x, y, z of points [M, 3] scaled to red, green, blue over their range."""
    points = np.asarray(points, dtype=np.float64)
    low, high = points.min(0), points.max(0)
    return ((points - low) / np.maximum(high - low, 1e-9) * 255).astype(np.uint8)


def paint_pixels(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """The image (uint8 [H, W, 3]) darkened to a quarter, with pixels (rows, cols [M]) set to colors [M, 3]."""
    painted = (np.asarray(image, dtype=np.float32) * 0.25).astype(np.uint8)
    painted[np.asarray(rows), np.asarray(cols)] = colors
    return painted


def side_by_side(images: Sequence[np.ndarray], gap: int = 4) -> Image.Image:
    """uint8 [H, W, 3] images of one height in a row, `gap` white pixels apart."""
    height = images[0].shape[0]
    width = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for im in images:
        canvas.paste(Image.fromarray(np.asarray(im, dtype=np.uint8)), (x, 0))
        x += im.shape[1] + gap
    return canvas


def save_png(picture: Image.Image, path: str | os.PathLike, scale: int = 1) -> None:
    """Write a Pillow image as PNG (atomic), enlarged `scale` times (nearest neighbour)."""
    if scale != 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def plot_arm_table(table: Mapping[str, Mapping[str, Mapping[str, float]]], arms: Sequence[str],
                   path: str | os.PathLike, title: str = "val mIoU (%), mean ± std over seeds") -> None:
    """Grouped bars of the benchmark table: one group per label setting, one bar per arm, error bars
    = std over seeds (an arm missing from a setting leaves its slot empty)."""
    plt = pyplot_agg()
    settings = list(table)
    x = np.arange(len(settings))
    width = 0.8 / max(len(arms), 1)
    figure, axis = plt.subplots(figsize=(2.0 + 1.5 * len(settings) + 0.2 * len(arms), 3.8))
    colors = plt.get_cmap("tab10")
    for i, arm in enumerate(arms):
        means = [table[s].get(arm, {}).get("mean", np.nan) for s in settings]
        stds = [table[s].get(arm, {}).get("std", 0.0) for s in settings]
        axis.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=stds, capsize=2, color=colors(i), label=arm)
    axis.set_xticks(x, settings, fontsize=8)
    axis.set_ylabel("val mIoU (%)")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=7, ncol=2)
    axis.grid(axis="y", alpha=0.3)
    save_figure(figure, path)
