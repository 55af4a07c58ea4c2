"""The main job on built-in synthetic data: write synthetic ScanNet scans, preprocess them, train a
sparse U-Net student on one scene's labels for a few steps and save it.

    python tools/demo.py                      # into outputs/demo, about a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse

from scene_kd.demo import run_demo
from scene_kd.models import STUDENTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo", help="output directory (default outputs/demo)")
    parser.add_argument("--scenes", type=int, default=2, help="synthetic scans to generate (default 2)")
    parser.add_argument("--frames", type=int, default=60, help="frames per synthetic scan (default 60)")
    parser.add_argument("--student", default="MinkUNet14A", choices=sorted(STUDENTS), help="student network")
    parser.add_argument("--voxel-size", type=float, default=0.05, help="voxel size in metres (default 0.05)")
    parser.add_argument("--steps", type=int, default=40, help="training steps (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scans and the training (default 0)")
    args = parser.parse_args()
    if args.scenes < 1 or args.frames < 1 or args.steps < 1 or args.voxel_size <= 0:
        parser.error("--scenes, --frames and --steps must be >= 1 and --voxel-size > 0")
    run_demo(args.out, num_scenes=args.scenes, num_frames=args.frames, student=args.student,
             voxel_size=args.voxel_size, steps=args.steps, seed=args.seed)


if __name__ == "__main__":
    main()
