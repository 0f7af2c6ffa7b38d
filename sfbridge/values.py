"""One validator per value a user can type: on the wire, on the command line, in ``SFBRIDGE_*``, in Python.

Why one place: the same seed used to be checked three ways, and the checks drifted (issue 11: the
protocol refused ``seed: -5`` while ``serve --seed`` or a ``DaemonConfig`` built in Python took it,
and a seed of 2^64 later killed the publisher thread inside msgpack). Each function here takes the
value as given, returns it in canonical form, or raises :class:`InvalidValue` whose message is the
same wherever the value came from: ``"<name> must be <accepted>, got <value>"``. Callers only add
where it came from (``op 'seed': ...``, ``argument --seed: ...``, ``SFBRIDGE_SEED='-5': ...``).

No third-party imports: the CLI's ``--help`` and the protocol module both load this.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MAX_SEED = 2**63 - 1  # an int64 everywhere: msgpack, C#, GDScript, torch.Generator
MAX_PROMPT_CHARS = 4000
MAX_BLEND_BLOCKS = 64
MAX_AT_BLOCK = 2**31 - 1  # fits a C# int; ~50 years of video at 0.75 s per block
MAX_AT_PTS = 1e8  # seconds (~3 years); its block is below MAX_AT_BLOCK
STEP_RANGE = (1, 1000)  # a denoising step is a timestep of the 1000-step schedule
MAX_STEPS = 4
MAX_SNDHWM = 10_000  # frames queued per subscriber; 0 would mean "unbounded" to libzmq
MAX_BLOCK_DELAY_S = 60.0
SHOWN_CHARS = 64  # a refused value is echoed at most this long (a 65 KB field must not flood the log)

TRANSITIONS = ("cut", "blend")
INTERPS = ("linear", "slerp")
MIXES = ("linear", "slerp")
PACES = ("native", "off")


class InvalidValue(ValueError):
    """A value outside what is accepted; ``name`` is the value's name, the message says what is accepted."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def shown(value: Any) -> str:
    """``repr`` of a refused value, cut to SHOWN_CHARS."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} chars)"


def _refuse(name: str, accepted: str, value: Any) -> InvalidValue:
    return InvalidValue(name, f"{name} must be {accepted}, got {shown(value)}")


def integer(value: Any, name: str, lo: int, hi: int | None = None, accepted: str | None = None) -> int:
    """An int (not bool, not float) in lo..hi; text is parsed (CLI, environment) but must be an integer."""
    accepted = accepted or (f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}")
    typed = value  # refusals show text as it was typed: got '-1' on the command line, got -1 on the wire
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise _refuse(name, accepted, typed) from None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise _refuse(name, accepted, typed)
    return value


def number(value: Any, name: str, lo: float, hi: float | None = None) -> float:
    """A finite int or float (not bool) in lo..hi; text is parsed."""
    accepted = f"a number in {lo:g}..{hi:g}" if hi is not None else f"a number >= {lo:g}"
    typed = value
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _refuse(name, accepted, typed) from None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < lo
            or (hi is not None and value > hi)):
        raise _refuse(name, accepted, typed)
    return float(value)


def choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """One of ``choices``; "" too is refused: an empty string is a client bug, not "the default"."""
    if not isinstance(value, str) or value not in choices:
        raise _refuse(name, f"one of {', '.join(choices)}", value)
    return value


def seed(value: Any, name: str = "seed") -> int:
    return integer(value, name, 0, MAX_SEED, accepted="an integer in 0..2^63-1")


def prompt(value: Any, name: str = "prompt") -> str:
    """A prompt text, stripped: not empty, at most MAX_PROMPT_CHARS."""
    if not isinstance(value, str):
        raise _refuse(name, "a string", value)
    text = value.strip()
    if not text:
        raise InvalidValue(name, f"{name} must not be empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidValue(name, f"{name} has {len(text)} chars, max {MAX_PROMPT_CHARS}")
    return text


def blend_blocks(value: Any, name: str = "blend_blocks") -> int:
    return integer(value, name, 1, MAX_BLEND_BLOCKS)


def transition(value: Any, name: str = "transition") -> str:
    return choice(value, name, TRANSITIONS)


def step(value: Any, name: str = "step") -> int:
    return integer(value, name, *STEP_RANGE)


def steps(values: Any, name: str = "steps") -> tuple[int, ...]:
    """1 to MAX_STEPS timesteps in 1..1000, strictly decreasing."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not 1 <= len(values) <= MAX_STEPS:
        raise _refuse(name, f"a list of 1 to {MAX_STEPS} timesteps", values)
    out = tuple(step(v, f"each of {name}") for v in values)
    if any(a <= b for a, b in zip(out, out[1:], strict=False)):
        raise InvalidValue(name, f"{name} must be strictly decreasing, got {list(out)}")
    return out


def at_block(value: Any, name: str = "at_block") -> int:
    return integer(value, name, 0, MAX_AT_BLOCK)


def at_pts(value: Any, name: str = "at_pts") -> float:
    return number(value, name, 0.0, MAX_AT_PTS)


def jpeg_quality(value: Any, name: str = "jpeg_quality") -> int:
    return integer(value, name, 1, 100)


def sndhwm(value: Any, name: str = "sndhwm") -> int:
    """Frames queued per subscriber: 0 means unbounded to libzmq, and a negative value fails at bind time."""
    return integer(value, name, 1, MAX_SNDHWM)


def block_delay(value: Any, name: str = "block_delay") -> float:
    return number(value, name, 0.0, MAX_BLOCK_DELAY_S)


def pace(value: Any, name: str = "pace") -> str:
    return choice(value, name, PACES)


def model(value: Any, name: str = "model") -> str:
    """``auto`` or a registered generator (imported lazily: the registry itself never imports torch)."""
    from sfbridge.generators import available

    names = ("auto", *available())
    if not isinstance(value, str) or value not in names:
        raise InvalidValue(name, f"unknown {name} {shown(value)}; choose from {', '.join(names)}")
    return value
