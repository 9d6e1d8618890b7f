"""Option values checked by the command-line parser, so that a bad one stops the
command before any work (exit code 2, one line naming the option's value).

Used as ``type=`` of ``argparse`` options; each raises ``argparse.ArgumentTypeError``
with what is accepted.
"""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind=float) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (e.g. --temperature: 0 is greedy)."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def output_rate(text: str) -> str | int:
    """translate --output-rate: 'model', 'input' or a rate in Hz."""
    if text in ("model", "input"):
        return text
    try:
        rate = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not 'model', 'input' or a whole number of Hz") from None
    if not 1000 <= rate <= 384000:
        raise argparse.ArgumentTypeError(f"{text!r} Hz is outside 1000..384000")
    return rate
