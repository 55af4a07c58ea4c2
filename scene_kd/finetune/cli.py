"""The command line shared by `tools/finetune_seg.py` and `tools/finetune_det.py`: a recipe, key=value
overrides in any order among the options, --init, --freeze-backbone, --eval-only and --print-config."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

from scene_kd.config import ConfigError, load_config, to_yaml


@dataclass(frozen=True)
class FinetuneCommand:
    """What differs between the finetuning tools: the schema, what runs, and the help texts."""

    schema: type
    run: Callable[[DictConfig], object]
    evaluate: Callable[[DictConfig, str, str], object]  # (cfg, checkpoint, out_dir)
    recipe_dir: str  # e.g. configs/finetune_seg
    override_example: str  # e.g. optim.lr=0.05
    init_help: str
    freeze_help: str
    eval_help: str


def finetune_main(command: FinetuneCommand, description: str, argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, resolve the config and train (or evaluate, or print the config); returns the exit code."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"recipe YAML ({command.recipe_dir}/*.yaml); without it, the schema defaults")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help=f"config overrides, e.g. {command.override_example} (anywhere among the options)")
    parser.add_argument("--init", help=command.init_help)
    parser.add_argument("--freeze-backbone", action="store_true", help=command.freeze_help)
    parser.add_argument("--eval-only", metavar="CHECKPOINT", help=command.eval_help)
    parser.add_argument("--eval-out", help="output directory of --eval-only (default: train.out_dir/eval_only)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides)
    if args.init:
        overrides.append(f"model.init={args.init}")
    if args.freeze_backbone:
        overrides.append("model.freeze_backbone=true")
    try:
        cfg = load_config(command.schema, args.config, overrides)
    except ConfigError as err:
        parser.error(str(err))
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if args.eval_only:
        command.evaluate(cfg, args.eval_only, args.eval_out or f"{cfg.train.out_dir}/eval_only")
        return 0
    command.run(cfg)
    return 0
