"""The main job on built-in synthetic data, the whole pipeline at toy size (about 8 minutes on 2 CPU cores):

  1. write synthetic ScanNet scans (.sens, meshes, annotations) and preprocess them;
  2. train a small 2D teacher on the frames' 2D labels;
  3. pretrain a sparse U-Net student from it by PPKT on the unlabelled scans;
  4. finetune 20-class segmentation with 200 labelled points per scene, from the pretrained student
     and from scratch, and evaluate both on the validation scans;
  5. print the table and write the pictures: loss_curves.png, correspondences.png (pixels painted
     with the 3D position of the point they see) and coloured PLYs of the predictions.

    python tools/demo.py                      # into outputs/demo
    python tools/demo.py --out /tmp/demo --seed 1

A rerun reuses finished stages (delete the output directory to start over).
"""

from __future__ import annotations

import argparse
import sys

from scene_kd import cli_types
from scene_kd.cli import CPU_THREADS_HELP, add_debug_flag, run_tool
from scene_kd.cpu_threads import apply_cpu_thread_policy


def run(argv: list[str] | None = None) -> int:
    apply_cpu_thread_policy()  # before torch is imported (scene_kd/cpu_threads.py)
    from scene_kd.demo import DEMO_SETTINGS, demo_settings, run_demo
    from scene_kd.models import STUDENTS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=CPU_THREADS_HELP)
    d = DEMO_SETTINGS
    parser.add_argument("--out", default="outputs/demo", help="output directory (default outputs/demo)")
    parser.add_argument("--seed", type=cli_types.seed,
                        default=0, help="seed of the scans and of every training (default 0)")
    parser.add_argument("--scenes", type=int, default=d.num_scenes,
                        help=f"synthetic scans, a quarter of them for validation (default {d.num_scenes})")
    parser.add_argument("--frames", type=int, default=d.num_frames, help=f"frames per scan (default {d.num_frames})")
    parser.add_argument("--student", default=d.student, choices=sorted(STUDENTS), help=f"student (default {d.student})")
    parser.add_argument("--voxel-size", type=float, default=d.voxel_size, help=f"metres (default {d.voxel_size})")
    parser.add_argument("--teacher-steps", type=int, default=d.teacher_steps,
                        help=f"2D teacher training steps (default {d.teacher_steps})")
    parser.add_argument("--pretrain-steps", type=int, default=d.pretrain_steps,
                        help=f"PPKT pretraining steps (default {d.pretrain_steps})")
    parser.add_argument("--finetune-steps", type=int, default=d.finetune_steps,
                        help=f"steps of each segmentation finetune (default {d.finetune_steps})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if min(args.scenes - 1, args.frames, args.teacher_steps, args.pretrain_steps, args.finetune_steps) < 1 \
            or args.voxel_size <= 0:
        parser.error("need --scenes >= 2 (one for validation), --frames and the step counts >= 1, --voxel-size > 0")
    settings = demo_settings(num_scenes=args.scenes, num_frames=args.frames, student=args.student,
                             voxel_size=args.voxel_size, teacher_steps=args.teacher_steps,
                             pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps)
    run_demo(args.out, seed=args.seed, settings=settings, progress=not args.no_progress)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The tool: its exit code, the project's expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="demo")


if __name__ == "__main__":
    sys.exit(main())
