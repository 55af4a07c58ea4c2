r"""Zero-shot 3D semantic segmentation from CLIP text with a concept-distillation checkpoint.

    python tools/zeroshot_seg.py --checkpoint runs/concept_clip_vitb16/checkpoints/last.pth \
        --data-root data/processed --split val --clip-model ViT-B-16 \
        --clip-weights weights/clip_vitb16_openai.pt --out-dir runs/concept_clip_vitb16/zeroshot

The 20 ScanNet class names, each in several prompt templates, are embedded by the text tower of the
same local open_clip weights as the pretraining teacher; every voxel's student feature goes through the
concept head's CLIP-space projection and takes the class of the nearest text embedding (cosine); the
labels are carried to every vertex and scored with the ScanNet 20-class evaluator. Prints the per-class
IoU table; with --out-dir also writes metrics.json, table.md and confusion.png. Needs a checkpoint of
loss.objective=concept or ppkt+concept (it holds the concept head). Nothing is downloaded: a missing
CLIP weights file is an error naming the path. Exits with status 1 and a message on any such error.
"""

from __future__ import annotations

import argparse
import sys

from scene_kd import cli_types
from scene_kd.cli import CPU_THREADS_HELP, add_debug_flag, run_tool
from scene_kd.cpu_threads import apply_cpu_thread_policy


def build_parser() -> argparse.ArgumentParser:
    from scene_kd.eval.zeroshot import SCANNET_TEMPLATES  # imports torch: after the CPU-thread policy (run)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=CPU_THREADS_HELP)
    parser.add_argument("--checkpoint", required=True,
                        help="pretraining checkpoint (train.out_dir/checkpoints/last.pth) with a concept head")
    parser.add_argument("--data-root", required=True,
                        help="processed scenes (tools/preprocess_scannet.py), each with segment20.npy")
    parser.add_argument("--split", default="val",
                        help="train, val, test (<data-root>/splits/<split>.txt) or a split file's path (default val)")
    parser.add_argument("--clip-model", help="open_clip model name whose text tower embeds the prompts, e.g. "
                        "ViT-B-16 (default: the checkpoint's teacher.options.model)")
    parser.add_argument("--clip-weights", help="local CLIP weights file, the teacher's (default: the checkpoint's "
                        "teacher.weights, unless --pretrained or --allow-random)")
    parser.add_argument("--pretrained", help="instead of --clip-weights: an open_clip pretrained tag looked up in "
                        "the local cache (--cache-dir)")
    parser.add_argument("--cache-dir", help="open_clip / Hugging Face cache directory for --pretrained")
    parser.add_argument("--allow-random", action="store_true",
                        help="random CLIP text weights when no weights are given (smoke tests: the mIoU means nothing)")
    parser.add_argument("--template", action="append", dest="templates", metavar="TEXT",
                        help="a prompt template with {} for the class name; repeat for several "
                        f"(default: {len(SCANNET_TEMPLATES)} templates such as {SCANNET_TEMPLATES[2]!r})")
    parser.add_argument("--out-dir", help="write metrics.json, table.md and confusion.png here")
    parser.add_argument("--write-predictions", action="store_true",
                        help="with --out-dir, also write ScanNet submission files submission/{scene}.txt")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda (default auto)")
    parser.add_argument("--voxel-size", type=cli_types.positive_float,
                        help="voxel size in metres (default: the checkpoint's data.voxel_size)")
    parser.add_argument("--chunk-voxels", type=cli_types.count, default=400_000,
                        help="scenes with more voxels run in overlapping blocks of at most this many (default 400000)")
    add_debug_flag(parser)
    return parser


def run(argv: list[str] | None = None) -> int:
    apply_cpu_thread_policy()  # before torch is imported (scene_kd/cpu_threads.py)
    from scene_kd.eval.semseg import format_iou_table
    from scene_kd.eval.zeroshot import SCANNET_TEMPLATES, zeroshot_segmentation

    args = build_parser().parse_args(argv)
    confusion = zeroshot_segmentation(
        args.checkpoint, args.data_root, args.split, clip_model=args.clip_model, clip_weights=args.clip_weights,
        pretrained=args.pretrained, cache_dir=args.cache_dir, allow_random=args.allow_random,
        templates=tuple(args.templates) if args.templates else SCANNET_TEMPLATES, out_dir=args.out_dir,
        write_predictions=args.write_predictions, device=args.device, voxel_size=args.voxel_size,
        chunk_voxels=args.chunk_voxels, progress=True)
    print(format_iou_table(confusion), end="")
    if args.out_dir:
        print(f"wrote {args.out_dir}/metrics.json, table.md, confusion.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The tool: its exit code, the project's expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="zeroshot_seg")


if __name__ == "__main__":
    sys.exit(main())
