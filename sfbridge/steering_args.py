"""Arguments of the steering requests (``prompt``, ``seed``, ``steps``, ``cancel``), checked before sending.

Why client-side checks when the daemon checks everything again: a game script that passes a bad
weight or both ``at_block`` and ``at_pts`` should learn it from a ``ValueError`` naming the argument,
raised on the line that made the mistake, not from a ``RequestError`` a round trip later (or a 6 s
``DaemonUnavailable`` when no daemon runs). The rules mirror docs/PROTOCOL.md 2.2; the Python client,
the asyncio client and the CLI all build their requests here, so they cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from sfbridge.protocol import (
    INTERPS,
    MAX_AT_BLOCK,
    MAX_AT_PTS,
    MAX_BLEND_BLOCKS,
    MAX_PROMPT_CHARS,
    MAX_WEIGHTED_PROMPTS,
    MIXES,
    TRANSITIONS,
)

__all__ = ["INTERPS", "MAX_WEIGHTED_PROMPTS", "MIXES", "check_state_id", "prompt_args", "schedule_args", "steps_args",
           "weighted_prompts"]

PromptEntry = tuple[str, float] | Mapping[str, Any]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_text(text: Any, name: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{name} must not be empty")
    if len(text.strip()) > MAX_PROMPT_CHARS:
        raise ValueError(f"{name} has {len(text.strip())} characters, max {MAX_PROMPT_CHARS}")
    return text


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def weighted_prompts(prompts: Iterable[PromptEntry]) -> list[dict[str, Any]]:
    """``[(text, weight), ...]`` or ``[{"text": ..., "weight": ...}, ...]`` -> the wire's list of maps.

    1 to 8 entries, each text a valid prompt, each weight a finite number >= 0, not all 0.
    """
    if isinstance(prompts, (str, bytes, Mapping)):
        raise ValueError(f"prompts must be a list of (text, weight) pairs, got {type(prompts).__name__}")
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(prompts):
        if isinstance(entry, Mapping):
            if set(entry) != {"text", "weight"}:
                raise ValueError(f"prompts[{i}] must have exactly the keys text and weight, got {sorted(entry)}")
            text, weight = entry["text"], entry["weight"]
        elif isinstance(entry, (tuple, list)) and len(entry) == 2:
            text, weight = entry
        else:
            raise ValueError(f"prompts[{i}] must be a (text, weight) pair or a {{text, weight}} map, got {entry!r}")
        check_text(text, f"prompts[{i}] text")
        if not _is_number(weight) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"prompts[{i}] weight must be a finite number >= 0, got {weight!r}")
        out.append({"text": text, "weight": weight})
    if not 1 <= len(out) <= MAX_WEIGHTED_PROMPTS:
        raise ValueError(f"prompts must hold 1 to {MAX_WEIGHTED_PROMPTS} entries, got {len(out)}")
    if not any(e["weight"] > 0 for e in out):
        raise ValueError("prompts weights must not all be 0")
    return out


def schedule_args(at_block: int | None = None, at_pts: float | None = None) -> dict[str, Any]:
    """``at_block`` (block index in the current scene) or ``at_pts`` (scene seconds), not both."""
    if at_block is not None and at_pts is not None:
        raise ValueError("give at_block or at_pts, not both")
    if at_block is not None:
        if isinstance(at_block, bool) or not isinstance(at_block, int) or not 0 <= at_block <= MAX_AT_BLOCK:
            raise ValueError(f"at_block must be an integer in 0..{MAX_AT_BLOCK}, got {at_block!r}")
        return {"at_block": at_block}
    if at_pts is not None:
        if not _is_number(at_pts) or not math.isfinite(at_pts) or not 0 <= at_pts <= MAX_AT_PTS:
            raise ValueError(f"at_pts must be a finite number of seconds in 0..{MAX_AT_PTS:g}, got {at_pts!r}")
        return {"at_pts": at_pts}
    return {}


def prompt_args(text: str | None = None, transition: str = "cut", blend_blocks: int | None = None, *,
                prompts: Iterable[PromptEntry] | None = None, interp: str | None = None, mix: str | None = None,
                recache: bool = False, at_block: int | None = None, at_pts: float | None = None) -> dict[str, Any]:
    """Fields of a ``prompt`` request. Only what differs from the daemon's defaults travels, so an
    older daemon (it ignores unknown keys) still takes a plain prompt; ``blend_blocks`` travels
    only with a blend, where it means something."""
    if (text is None) == (prompts is None):
        raise ValueError("give text or prompts, exactly one of them")
    args: dict[str, Any] = {}
    if text is not None:
        args["text"] = check_text(text, "text")
    else:
        args["prompts"] = weighted_prompts(prompts)
    args["transition"] = check_choice(transition, "transition", TRANSITIONS)
    if transition == "blend" and blend_blocks is not None:
        if isinstance(blend_blocks, bool) or not isinstance(blend_blocks, int) \
                or not 1 <= blend_blocks <= MAX_BLEND_BLOCKS:
            raise ValueError(f"blend_blocks must be an integer in 1..{MAX_BLEND_BLOCKS}, got {blend_blocks!r}")
        args["blend_blocks"] = blend_blocks
    if interp is not None:
        args["interp"] = check_choice(interp, "interp", INTERPS)
    if mix is not None:
        if prompts is None:
            raise ValueError("mix combines a weighted list: pass prompts=[...], not text")
        args["mix"] = check_choice(mix, "mix", MIXES)
        if mix == "slerp" and len(args["prompts"]) != 2:
            raise ValueError(f"mix 'slerp' takes exactly 2 prompts, got {len(args['prompts'])}")
    if not isinstance(recache, bool):
        raise ValueError(f"recache must be True or False, got {recache!r}")
    if recache:
        args["recache"] = True
    args.update(schedule_args(at_block, at_pts))
    return args


def steps_args(steps: Iterable[int], at_block: int | None = None, at_pts: float | None = None) -> dict[str, Any]:
    """Steps are checked by the daemon (1..4 decreasing values in 1..1000); sent as a plain list."""
    return {"steps": list(steps), **schedule_args(at_block, at_pts)}


def check_state_id(state_id: Any) -> int:
    if isinstance(state_id, bool) or not isinstance(state_id, int) or state_id < 0:
        raise ValueError(f"state_id must be an integer >= 0, got {state_id!r}")
    return state_id
