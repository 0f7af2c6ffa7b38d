"""Settings of the ``sfbridge`` command: value types that say what they accept, and ``SFBRIDGE_*`` variables.

Why apart from :mod:`sfbridge.cli`: the parser says *which* options exist; this module says which
values are valid and where a value left off the command line comes from. Variables are read after
parsing, not as parser defaults, so a bad ``SFBRIDGE_SEED`` cannot break ``sfbridge --help`` and its
error names the variable rather than ``--seed``.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from typing import Any

from sfbridge import values

LOG_LEVELS = ("debug", "info", "warning", "error")


class UsageError(Exception):
    """A setting the user gave is unusable; the message names it, its value and what is accepted."""


# --- value types: each raises ArgumentTypeError saying what is accepted (argparse prints it as is) ---------


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            accepted = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"must be an integer {accepted}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def checked(check: Callable[[Any, str], Any], name: str) -> Callable[[str], Any]:
    """An argparse type from a validator of sfbridge/values.py: the CLI, the ``SFBRIDGE_*`` variables, the
    wire and ``DaemonConfig`` then refuse a value with the same message (``seed must be an integer in ...``)."""
    def parse(text: str) -> Any:
        try:
            return check(text, name)
        except values.InvalidValue as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


seed_value = checked(values.seed, "seed")
prompt_value = checked(values.prompt, "prompt")
sndhwm_value = checked(values.sndhwm, "sndhwm")
block_delay_value = checked(values.block_delay, "block_delay")
jpeg_quality_value = checked(values.jpeg_quality, "jpeg_quality")
pace_value = checked(values.pace, "pace")
model_name = checked(values.model, "model")


def float_min(lo: float, inclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < lo or (value == lo and not inclusive):
            raise argparse.ArgumentTypeError(f"must be a number {'>=' if inclusive else '>'} {lo:g}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def weight_value(text: str) -> float:
    """A prompt weight: finite and >= 0 (a weighted list's weights need not sum to 1; the daemon normalises)."""
    try:
        return float_min(0, True)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 (a prompt weight), got {text!r}") from None


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


# Settings read from SFBRIDGE_* after parsing when the option was not given: dest -> (type, default).
ENV_SETTINGS: dict[str, tuple[Callable[[str], Any], Any]] = {
    "log_level": (one_of(*LOG_LEVELS), "info"),
    "model": (model_name, "auto"),
    "prompt": (prompt_value, None),
    "seed": (seed_value, 0),
    "pace": (pace_value, "native"),
    "model_dir": (str, None),
    "curve_secret": (str, None),  # key files: read and checked by sfbridge/security.py, errors name the file
    "curve_allow": (str, None),
}
# `reset --seed` does not read SFBRIDGE_SEED
SERVE_ONLY = ("model", "prompt", "seed", "pace", "model_dir", "curve_secret", "curve_allow")


def apply_environment(a: argparse.Namespace) -> None:
    """Fill settings left out on the command line from ``SFBRIDGE_*``, then defaults; check endpoints."""
    from sfbridge.endpoints import check_distinct, resolve_endpoint

    for dest, (parse, default) in ENV_SETTINGS.items():
        if (dest in SERVE_ONLY and a.command != "serve") or getattr(a, dest) is not None:
            continue
        var = f"SFBRIDGE_{dest.upper()}"
        raw = os.environ.get(var)
        if raw:
            try:
                default = parse(raw)
            except (argparse.ArgumentTypeError, ValueError) as exc:
                raise UsageError(f"{var}={raw!r}: {exc}") from None
        setattr(a, dest, default)
    found = {}
    for name in ("control", "frames"):
        if hasattr(a, name):
            try:
                found[name] = resolve_endpoint(name, getattr(a, name), f"--{name}")
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            setattr(a, name, found[name][0])
    if len(found) == 2:
        try:
            check_distinct(found["control"], found["frames"])
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if getattr(a, "command", None) == "serve" and hasattr(a, "input"):
        from sfbridge.endpoints import serve_input

        try:
            a.input = serve_input(a.input, found)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    timeout = getattr(a, "timeout", 1.0)
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"--timeout must be a positive number of seconds, got {timeout:g}")
