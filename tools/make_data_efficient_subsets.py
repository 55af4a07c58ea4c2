r"""Draw the data-efficient ScanNet subsets (limited scene reconstructions and limited annotations)
of processed scenes and save them as the files the finetuning configs reference.

    python tools/make_data_efficient_subsets.py data/processed
    python tools/make_data_efficient_subsets.py --root data/processed --out data/subsets --seed 0 \
        --scene-percents 1 5 10 20 --point-counts 20 50 100 200

Writes `scenes_{pct}pct.txt` (one scene id a line), `points_{n}.json` ({scene_id: [point
indices]}) and `subsets.json` under --out (default <root>/subsets/), each atomically. Subsets are
prefixes of one seeded permutation, hence nested, and the same seed always gives the same files
(see docs/finetuning_data.md). --pointcept-tasks [DIR] also writes the same draw as Pointcept's
data-efficient files, DIR/scenes/{pct}.txt (lr_file) and DIR/points/points{n} (la_file), by default
under <root>/tasks (docs/data_format.md).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from scene_kd import cli_types
from scene_kd.cli import add_debug_flag, run_tool
from scene_kd.data.subsets import POINT_COUNTS, SCENE_PERCENTS, make_data_efficient_subsets


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", help="processed dataset directory (tools/preprocess_scannet.py output)")
    parser.add_argument("--root", dest="root_option", metavar="ROOT", help="the same, as an option")
    parser.add_argument("--out", help="output directory (default: <root>/subsets)")
    parser.add_argument("--split", default="train", help="train / val / a split file (default: train)")
    parser.add_argument("--seed", type=cli_types.seed,
                        default=0, help="seed of the scene and point permutations (default: 0)")
    parser.add_argument("--scene-percents", type=float, nargs="*", default=list(SCENE_PERCENTS),
                        help="percentages of the split's scenes (default: 1 5 10 20)")
    parser.add_argument("--point-counts", type=int, nargs="*", default=list(POINT_COUNTS),
                        help="labelled points per scene (default: 20 50 100 200)")
    parser.add_argument("--pointcept-tasks", nargs="?", const="", metavar="DIR",
                        help="also write Pointcept's lr_file / la_file for the same draw under DIR "
                        "(default when given without DIR: <root>/tasks); needs --split train")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if (args.root is None) == (args.root_option is None):
        parser.error("give the processed dataset directory once, as ROOT or --root ROOT")
    if not args.scene_percents and not args.point_counts:
        parser.error("--scene-percents and --point-counts are both empty: nothing to draw")
    root = args.root if args.root is not None else args.root_option
    tasks = None if args.pointcept_tasks is None else (args.pointcept_tasks or Path(root) / "tasks")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = make_data_efficient_subsets(root, args.out, split=args.split, scene_percents=args.scene_percents,
                                              point_counts=args.point_counts, seed=args.seed, pointcept_tasks=tasks)
    for name, path in written.items():
        print(f"{name}: {path}")
    for warning in caught:
        print(f"warning: {warning.message}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The tool: its exit code, the project's expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="make_data_efficient_subsets")


if __name__ == "__main__":
    sys.exit(main())
