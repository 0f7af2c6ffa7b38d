"""The steering subcommands' options (``prompt``, ``seed``, ``steps``, ``cancel``) and the requests they make.

Why apart from :mod:`sfbridge.cli`: prompt options (weighted lists, transitions, re-cache, scheduling)
need cross-option rules that argparse cannot express (``--weights`` has one value per TEXT, ``--blend N``
is ``--transition blend --blend-blocks N``). They live here with the parser lines they check; the
request fields themselves come from :mod:`sfbridge.steering_args`, shared with the Python clients.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from sfbridge.cli_settings import UsageError, float_min, int_range, one_of, weight_value
from sfbridge.input_frames import DEFAULT_STRENGTH, INPUT_MODES, input_args
from sfbridge.protocol import MAX_BLEND_BLOCKS
from sfbridge.steering_args import INTERPS, MAX_WEIGHTED_PROMPTS, MIXES, prompt_args, schedule_args

log = logging.getLogger("sfbridge.cli")


def add_schedule_options(p: argparse.ArgumentParser) -> None:
    """``--at-block`` / ``--at-pts``: argparse itself refuses both at once with one error line."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--at-block", type=int_range(0), default=None, metavar="N",
                       help="land at block N of the current scene (the next block if N has begun) [next block]")
    group.add_argument("--at-pts", type=float_min(0, True), default=None, metavar="S",
                       help="land at the first block whose first frame is at scene time >= S seconds [next block]")


def add_prompt_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="+", metavar="TEXT",
                   help=f"the new prompt; 2..{MAX_WEIGHTED_PROMPTS} TEXTs make a weighted list (equal weights "
                        "unless --weights)")
    p.add_argument("--weights", type=weight_value, nargs="+", default=None, metavar="W",
                   help="one weight >= 0 per TEXT, not all 0 (normalised by the daemon), e.g. --weights 0.7 0.3")
    p.add_argument("--mix", type=one_of(*MIXES), default=None, metavar="{" + ",".join(MIXES) + "}",
                   help="how a weighted list combines: linear (norm-preserving weighted mean) or slerp "
                        "(exactly 2 TEXTs) [linear]")
    p.add_argument("--transition", choices=("cut", "blend"), default=None,
                   help="cut: switch at the block where it lands; blend: move over --blend-blocks blocks [cut]")
    p.add_argument("--blend", type=int_range(1, MAX_BLEND_BLOCKS), default=None, metavar="N",
                   help=f"shorthand for --transition blend --blend-blocks N (1..{MAX_BLEND_BLOCKS})")
    p.add_argument("--blend-blocks", type=int, default=None, metavar="N",
                   help=f"blocks a blend takes, 1..{MAX_BLEND_BLOCKS} (only with --transition blend) [4]")
    p.add_argument("--interp", type=one_of(*INTERPS), default=None, metavar="{" + ",".join(INTERPS) + "}",
                   help="path of a blend from what is on screen to the new prompt [linear]")
    p.add_argument("--recache", action="store_true",
                   help="where it lands, rebuild the attention cache of the window's recent frames under the new "
                        "prompt (follows the prompt faster without a hard cut; costs one extra pass)")
    add_schedule_options(p)


def prompt_request(a: argparse.Namespace) -> dict[str, Any]:
    """The ``prompt`` request fields for parsed options; UsageError for contradictions."""
    transition = a.transition or "cut"
    blend_blocks = a.blend_blocks
    if a.blend is not None:
        if a.transition == "cut":
            raise UsageError(f"--blend {a.blend} means --transition blend; it cannot go with --transition cut")
        if blend_blocks is not None and blend_blocks != a.blend:
            raise UsageError(f"--blend {a.blend} and --blend-blocks {blend_blocks} disagree; give one of them")
        transition, blend_blocks = "blend", a.blend
    if blend_blocks is not None and transition != "blend":
        log.warning("--blend-blocks has no effect with --transition %s", transition)
        blend_blocks = None
    elif blend_blocks is not None and not 1 <= blend_blocks <= MAX_BLEND_BLOCKS:
        raise UsageError(f"--blend-blocks must be in 1..{MAX_BLEND_BLOCKS} for a blend, got {blend_blocks}")
    if a.interp is not None and transition != "blend":
        log.warning("--interp has no effect with --transition %s", transition)
    texts: list[str] = a.text
    for i, text in enumerate(texts, 1):
        if not text.strip():
            raise UsageError(f"TEXT {i} of {len(texts)} is empty; a prompt needs some words")
    if len(texts) > MAX_WEIGHTED_PROMPTS:
        raise UsageError(f"{len(texts)} TEXTs given; a weighted list takes at most {MAX_WEIGHTED_PROMPTS}")
    weights = a.weights
    if weights is not None and len(weights) != len(texts):
        raise UsageError(f"--weights has {len(weights)} value{'s' * (len(weights) != 1)} for {len(texts)} TEXTs; "
                         "give one weight per TEXT")
    if weights is not None and not any(w > 0 for w in weights):
        raise UsageError(f"--weights {' '.join(f'{w:g}' for w in weights)}: at least one weight must be > 0")
    if a.mix is not None and len(texts) == 1 and weights is None:
        raise UsageError("--mix combines a weighted list; give two or more TEXTs")
    if a.mix == "slerp" and len(texts) != 2:
        raise UsageError(f"--mix slerp takes exactly 2 TEXTs, got {len(texts)}")
    kw: dict[str, Any] = {"transition": transition, "blend_blocks": blend_blocks, "interp": a.interp,
                          "mix": a.mix, "recache": a.recache, "at_block": a.at_block, "at_pts": a.at_pts}
    try:
        if len(texts) == 1 and weights is None:
            return prompt_args(texts[0], **kw)
        pairs = list(zip(texts, weights or [1.0] * len(texts), strict=True))
        return prompt_args(prompts=pairs, **kw)
    except ValueError as exc:  # what the checks above do not cover, e.g. a prompt over 4000 characters
        text = str(exc)
        raise UsageError(f"--{text.replace('_', '-', 1)}" if text.startswith("at_") else text) from None


def strength_value(text: str) -> float:
    """A v2v strength: a number in 0..1 (1 = text-to-video, lower keeps more of the input)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in 0..1, got {text!r}")
    return value


def add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("mode", type=one_of(*INPUT_MODES), metavar="{" + ",".join(INPUT_MODES) + "}",
                   help="v2v: restyle the frames games send to the input socket; off: text-to-video only")
    p.add_argument("--strength", type=strength_value, default=None, metavar="S",
                   help=f"v2v noise strength 0..1: 1 ignores the input, lower follows it more [{DEFAULT_STRENGTH}]")
    p.add_argument("--motion-adaptive", action="store_true",
                   help="v2v: lower the strength while the input moves a lot")
    add_schedule_options(p)


def input_request(a: argparse.Namespace) -> dict[str, Any]:
    """The ``input`` request fields; options that mean nothing with ``off`` are warned about."""
    if a.mode == "off":
        for name, given in (("--strength", a.strength is not None), ("--motion-adaptive", a.motion_adaptive)):
            if given:
                log.warning("%s has no effect with mode off", name)
    strength = DEFAULT_STRENGTH if a.strength is None else a.strength
    try:
        return input_args(a.mode, strength, a.motion_adaptive, a.at_block, a.at_pts)
    except ValueError as exc:  # past the protocol's scheduling limits
        text = str(exc)
        raise UsageError(f"--{text.replace('_', '-', 1)}" if text.startswith("at_") else text) from None


def schedule_request(a: argparse.Namespace) -> dict[str, Any]:
    try:
        return schedule_args(a.at_block, a.at_pts)
    except ValueError as exc:  # past the protocol's upper limits
        raise UsageError(f"--{str(exc).replace('_', '-', 1)}") from None
