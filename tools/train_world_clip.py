"""Train an in-world CLIP on the processed scenes' frames and measure it; see docs/world_clip.md.

    python tools/train_world_clip.py --data data/processed --out runs/world_clip --steps 1500

Image-text pairs come from the frames' 2D labels (the annotated points projected with a depth test):
object crops captioned "a photo of a <class>." through prompt templates, and whole frames captioned
with the classes they show. An open_clip CLIP (a tiny ViT and a small text transformer, open_clip's
tokenizer and ClipLoss) is trained on the --train-split scenes and measured on the --val-split scenes
through the library's CLIP teacher: 2D zero-shot accuracy on validation crops (the 20 ScanNet class
names x prompt templates) and the pixel mIoU of its dense features against the same text on validation
frames. --pool-type avg (the default) makes the image embedding the mean of the patch tokens, so
ClipLoss trains the dense features; tok pools the class token as OpenAI's CLIP (the dense features are
then MaskCLIP's, at chance for a CLIP this small). Writes to --out: model_config.json and world_clip.pt
(load them as a teacher with teacher.name=clip teacher.weights=OUT/world_clip.pt
teacher.options.model=OUT/model_config.json), checkpoints/last.pt (a rerun resumes), train_metrics.json
and metrics.json (the two figures, the loss curve's start and end, the training time, the pair counts).
Nothing is downloaded. Bad input is a one-line error naming the file and exit status 1 (--debug shows
the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from scene_kd import cli_types
from scene_kd.cli import CPU_THREADS_HELP, add_debug_flag, run_tool
from scene_kd.cpu_threads import POLICY_VARIABLE, apply_cpu_thread_policy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=CPU_THREADS_HELP)
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, type=Path, metavar="ROOT",
                      help="processed scenes (tools/preprocess_scannet.py) with segment20.npy and instance.npy")
    data.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (created)")
    data.add_argument("--train-split", default="train",
                      help="scenes to train on: train/val/test (ROOT/splits/<name>.txt) or a split file (default train)")
    data.add_argument("--val-split", default="val", help="scenes to measure on, as --train-split (default val)")
    data.add_argument("--frame-size", type=cli_types.image_size, default=(160, 120), metavar="WxH",
                      help="frames are read (and labelled) at this size (default 160x120)")
    data.add_argument("--min-crop-pixels", type=cli_types.count, default=8,
                      help="labelled pixels an object needs in a frame to give a crop (default 8)")
    data.add_argument("--caption-min-fraction", type=cli_types.fraction, default=0.03,
                      help="a class is named in a frame's caption when it covers this fraction of the frame's "
                      "labelled pixels (default 0.03)")
    data.add_argument("--region-side", type=cli_types.fraction,
                      nargs="+", default=[0.25], metavar="FRACTION",
                      help="region crops: window side as a fraction of the frame's shorter side, 0 for none; "
                      "several sides give a region per class and side (default 0.25)")
    data.add_argument("--min-region-purity", type=cli_types.fraction, default=0.5,
                      help="a region crop is kept when its class holds this fraction of the window's labelled "
                      "pixels (default 0.5)")
    model = parser.add_argument_group("model (an open_clip model config, written to OUT/model_config.json)")
    model.add_argument("--image-size", type=cli_types.count,
                       default=64, help="CLIP input side in pixels (default 64)")
    model.add_argument("--patch-size", type=cli_types.count,
                       default=8, help="ViT patch side; the dense stride (default 8)")
    model.add_argument("--width", type=cli_types.count, default=96, help="ViT width (default 96)")
    model.add_argument("--layers", type=cli_types.count, default=4, help="ViT blocks (default 4)")
    model.add_argument("--head-width", type=cli_types.count,
                       default=32, help="ViT attention head width (default 32)")
    model.add_argument("--embed-dim", type=cli_types.count,
                       default=96, help="joint embedding width (default 96)")
    model.add_argument("--text-width", type=cli_types.count,
                       default=96, help="text transformer width (default 96)")
    model.add_argument("--text-heads", type=cli_types.count,
                       default=3, help="text transformer heads (default 3)")
    model.add_argument("--text-layers", type=cli_types.count,
                       default=3, help="text transformer blocks (default 3)")
    model.add_argument("--context-length", type=cli_types.count,
                       default=32, help="text tokens, longer captions are cut "
                       "(default 32)")
    model.add_argument("--pool-type", choices=("avg", "tok"), default="avg",
                       help="image embedding: avg, the mean of the patch tokens (ClipLoss then trains the dense "
                       "features), or tok, the class token as OpenAI's CLIP (default avg)")
    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=cli_types.count, default=1500, help="optimizer steps (default 1500)")
    train.add_argument("--batch-size", type=cli_types.checked(int, cli_types.AT_LEAST_2),
                       default=128, help="pairs per step, the contrastive batch "
                       "(default 128)")
    train.add_argument("--lr", type=cli_types.positive_float,
                       default=1e-3, help="AdamW peak learning rate (default 1e-3)")
    train.add_argument("--weight-decay", type=cli_types.non_negative_float,
                       default=0.1, help="AdamW weight decay on matrices (default 0.1)")
    train.add_argument("--warmup-steps", type=cli_types.non_negative_int,
                       help="linear warmup before the cosine decay (default steps / 10)")
    train.add_argument("--no-augment", action="store_true", help="no random flips and zooms of the pair images")
    train.add_argument("--seed", type=cli_types.seed,
                       default=0, help="initialization, batches, augmentation and captions "
                       "(default 0)")
    train.add_argument("--checkpoint-every", type=cli_types.count, default=100,
                       help="save the resumable state every this many steps (default 100)")
    train.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    train.add_argument("--threads", type=cli_types.count,
                       help="torch CPU threads (default: one per core, fewer while other processes keep cores "
                       "busy, as every tool; see docs/performance.md)")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--dense-image-size", type=cli_types.image_size, metavar="WxH",
                            help="run the dense teacher on validation frames at this size, a multiple of the patch "
                            "(default: the CLIP input size, frames stretched as the frame pairs are)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_flag(parser)
    return parser


def train_and_measure(args: argparse.Namespace) -> dict:
    """Build the pairs, train (or resume) and measure; writes and returns OUT/metrics.json's dict."""
    import torch

    from scene_kd.atomic import write_text_atomic
    from scene_kd.transfer.world_clip import evaluate_world_clip, tiny_clip_config, train_world_clip
    from scene_kd.transfer.world_clip_data import (
        PairSettings,
        build_pair_set,
        describe_pairs,
        seg20_class_names,
    )

    if args.threads is not None:  # a fixed count, as SCENE_KD_CPU_THREADS=N: the loop does not follow the load
        os.environ[POLICY_VARIABLE] = str(args.threads)
        torch.set_num_threads(args.threads)
    started, started_cpu = time.perf_counter(), time.process_time()
    settings = PairSettings(image_size=args.image_size, frame_size=args.frame_size,
                            min_crop_pixels=args.min_crop_pixels, caption_min_fraction=args.caption_min_fraction,
                            region_side=tuple(args.region_side), min_region_purity=args.min_region_purity)
    progress = not args.no_progress
    names = seg20_class_names()
    train_pairs, _ = build_pair_set(args.data, args.train_split, names, settings, seed=args.seed, progress=progress)
    val_pairs, val_frames = build_pair_set(args.data, args.val_split, names, settings, seed=args.seed,
                                           progress=progress)
    config = tiny_clip_config(
        image_size=args.image_size, patch_size=args.patch_size, width=args.width, layers=args.layers,
        head_width=args.head_width, embed_dim=args.embed_dim, text_width=args.text_width,
        text_heads=args.text_heads, text_layers=args.text_layers, context_length=args.context_length,
        pool_type=args.pool_type)
    _, train_metrics = train_world_clip(
        train_pairs, args.out, model_config=config, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, augment=not args.no_augment,
        seed=args.seed, checkpoint_every=args.checkpoint_every, device=args.device, progress=progress)
    dense_size = None if args.dense_image_size is None else args.dense_image_size[::-1]
    scores = evaluate_world_clip(train_metrics["weights"], train_metrics["model_config"], val_pairs, val_frames,
                                 class_names=names, dense_image_size=dense_size, device=args.device)
    losses = train_metrics["loss"]
    window = max(1, min(20, len(losses) // 10))
    metrics = {
        "zero_shot_crop_accuracy": scores["crop_accuracy"],
        "zero_shot_crop_mean_class_accuracy": scores["crop_mean_class_accuracy"],
        "chance": scores["chance"],
        "pixel_miou": scores["pixel_miou"],
        "pixel_accuracy": scores["pixel_accuracy"],
        "pixel_iou": dict(zip(names, scores["pixel_iou"], strict=True)),
        "zero_shot_region_accuracy": scores.get("region_accuracy"),
        "zero_shot_region_mean_class_accuracy": scores.get("region_mean_class_accuracy"),
        "val_crops": scores["crops"], "val_regions": scores.get("regions", 0), "val_frames": scores["frames"],
        "loss_start": sum(losses[:window]) / window, "loss_end": sum(losses[-window:]) / window,
        "loss_window": window,
        "train_seconds": train_metrics["seconds"], "train_cpu_seconds": train_metrics["cpu_seconds"],
        "total_seconds": time.perf_counter() - started, "total_cpu_seconds": time.process_time() - started_cpu,
        "train_pairs": describe_pairs(train_pairs, names), "val_pairs": describe_pairs(val_pairs, names),
        "weights": train_metrics["weights"], "model_config": train_metrics["model_config"],
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    write_text_atomic(args.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def check_model_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The sizes that must fit each other, checked before any work (a usage error naming the flags)."""
    if args.image_size % args.patch_size:
        parser.error(f"--image-size {args.image_size} must be a multiple of --patch-size {args.patch_size}")
    if args.width % args.head_width:
        parser.error(f"--width {args.width} must be a multiple of --head-width {args.head_width}")
    if args.text_width % args.text_heads:
        parser.error(f"--text-width {args.text_width} must be a multiple of --text-heads {args.text_heads}")
    if args.dense_image_size and any(side % args.patch_size for side in args.dense_image_size):
        parser.error(f"--dense-image-size sides must be multiples of --patch-size {args.patch_size}")


def run(argv: list[str] | None = None) -> int:
    apply_cpu_thread_policy()  # before torch is imported (scene_kd/cpu_threads.py)
    parser = build_parser()
    args = parser.parse_args(argv)
    check_model_flags(parser, args)
    metrics = train_and_measure(args)
    print(f"zero-shot accuracy on {metrics['val_crops']} validation crops: "
          f"{100 * metrics['zero_shot_crop_accuracy']:.1f} % (mean over classes "
          f"{100 * metrics['zero_shot_crop_mean_class_accuracy']:.1f} %, chance {100 * metrics['chance']:.0f} %)")
    print(f"dense features vs text on {metrics['val_frames']} validation frames: pixel mIoU "
          f"{100 * metrics['pixel_miou']:.1f} % (pixel accuracy {100 * metrics['pixel_accuracy']:.1f} %)")
    print(f"ClipLoss {metrics['loss_start']:.3f} -> {metrics['loss_end']:.3f}, training "
          f"{metrics['train_cpu_seconds']:.0f} s CPU ({metrics['train_seconds']:.0f} s wall); "
          f"wrote {args.out / 'metrics.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The tool: its exit code, the project's expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="train_world_clip")


if __name__ == "__main__":
    sys.exit(main())
