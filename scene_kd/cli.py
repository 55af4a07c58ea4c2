"""The command line every job tool shares (`tools/pretrain.py`, `tools/finetune_seg.py`,
`tools/finetune_det.py`): a recipe, key=value overrides anywhere among the options, --print-config,
and for finetuning --init, --freeze-backbone and --eval-only; and the one way every tool reports the
project's expected errors: one line on stderr, exit code 1 (2 for usage), the traceback only with
--debug or SCENE_KD_DEBUG=1."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from scene_kd.config import ConfigError, load_config, to_yaml
from scene_kd.cpu_threads import apply_cpu_thread_policy

# What a bad input, a bad file or a missing dependency raises in this project (a bug raises others).
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, ValueError, KeyError, OSError, FloatingPointError, ImportError)


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("SCENE_KD_DEBUG", "") not in ("", "0")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: environment SCENE_KD_DEBUG=1)")


def run_tool(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None,
             name: str | None = None) -> int:
    """`main(argv)`, with the project's expected errors turned into one line on stderr,
    `<name>: error: <what and where>`, and exit code 1 (a usage error stays argparse's exit code 2;
    Ctrl-C exits 130). name: the tool's name (default: the script's file name without .py)."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as err:
        if debug_requested(argv):
            raise
        message = str(err) if not isinstance(err, KeyError) else str(err.args[0]) if err.args else repr(err)
        name = name or Path(sys.argv[0]).stem
        print(f"{name}: error: {message or type(err).__name__} (--debug shows the traceback)", file=sys.stderr)
        return 1


@dataclass(frozen=True)
class JobCommand:
    """What differs between the job tools: the schema, what runs, the help texts, and which of the
    finetuning options the tool offers (an option whose help is None is not offered)."""

    schema: type
    run: Callable[[DictConfig], object] | str  # or "module:function", imported only when it runs
    recipe_dir: str  # e.g. configs/finetune_seg
    override_example: str  # e.g. optim.lr=0.05
    evaluate: Callable[[DictConfig, str, str], object] | str | None = None  # (cfg, checkpoint, out_dir)
    init_help: str | None = None
    freeze_help: str | None = None
    eval_help: str | None = None


CPU_THREADS_HELP = textwrap.fill(
    "environment: SCENE_KD_CPU_THREADS=auto (default: on the CPU, train on the cores other processes leave "
    "idle, checked every few seconds; OpenMP threads spin only briefly), =N (N threads) or =keep (the "
    "runtime's defaults); docs/performance.md", width=100)


def job_parser(command: JobCommand, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=CPU_THREADS_HELP)
    parser.add_argument("--config", help=f"recipe YAML ({command.recipe_dir}/*.yaml); without it, the schema defaults")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help=f"config overrides, e.g. {command.override_example} (anywhere among the options)")
    if command.init_help:
        parser.add_argument("--init", help=command.init_help)
    if command.freeze_help:
        parser.add_argument("--freeze-backbone", action="store_true", help=command.freeze_help)
    if command.evaluate is not None:
        parser.add_argument("--eval-only", metavar="CHECKPOINT", help=command.eval_help)
        parser.add_argument("--eval-out", help="output directory of --eval-only (default: train.out_dir/eval_only)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_debug_flag(parser)
    return parser


def resolve_function(function: Callable | str) -> Callable:
    """A callable, or the function a "package.module:function" string names (imported now)."""
    if callable(function):
        return function
    module, _, name = function.partition(":")
    return getattr(importlib.import_module(module), name)


def job_main(command: JobCommand, description: str, argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, resolve the config and train (or evaluate, or print the config); returns the exit code.
    The CPU thread policy is applied first (`scene_kd.cpu_threads`), so a tool that names its job
    functions as "module:function" strings imports torch only after it."""
    apply_cpu_thread_policy()
    parser = job_parser(command, description)
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides)
    if getattr(args, "init", None):
        overrides.append(f"model.init={args.init}")
    if getattr(args, "freeze_backbone", False):
        overrides.append("model.freeze_backbone=true")
    try:
        cfg = load_config(command.schema, args.config, overrides)
    except ConfigError as err:
        parser.error(str(err))
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if getattr(args, "eval_only", None):
        resolve_function(command.evaluate)(cfg, args.eval_only, args.eval_out or f"{cfg.train.out_dir}/eval_only")
        return 0
    resolve_function(command.run)(cfg)
    return 0
