"""argparse types that check a flag's range as it is parsed, so that a bad number is a usage error
naming the flag (`error: argument --threads: must be >= 1, got 0`, exit code 2) before any work starts,
with the same range checks as the config keys (`scene_kd/config_ranges.py`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from scene_kd.config_ranges import AT_LEAST_1, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, Check

AT_LEAST_2: Check = (lambda v: v >= 2, ">= 2")


def checked(kind: type, check: Check) -> Callable[[str], Any]:
    """An argparse `type`: `kind(text)` (int or float) when it passes `check`, else argparse's usage
    error for that flag."""
    test, wanted = check

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} {wanted}"  # argparse names the type in some messages
    return parse


count = checked(int, AT_LEAST_1)  # steps, threads, workers, layer widths: >= 1
non_negative_int = checked(int, NON_NEGATIVE)
seed = non_negative_int  # numpy seeds: >= 0
positive_float = checked(float, POSITIVE)
non_negative_float = checked(float, NON_NEGATIVE)
fraction = checked(float, UNIT_INTERVAL)  # in [0, 1]


def image_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H), both >= 1."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 320x240, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return width, height
