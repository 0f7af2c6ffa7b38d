"""Conditioning math shared by every generator: weighted prompt mixes, slerp, blend transitions.

Rows are the last axis: a text embedding ``[B, L, D]`` is L token rows of D values, testsrc's colours
``[2, 3]`` are two RGB rows. Everything works on torch tensors and numpy arrays alike (numpy callers never
import torch), computed in at least float32 and cast back.

- :func:`mix`: a weighted prompt list. ``linear``: weights normalised to sum 1, the weighted sum rescaled
  per row to the weighted mean of the inputs' row norms (a plain average of two unrelated embeddings is
  shorter than either, which the model reads as a weaker prompt). ``slerp``: exactly two entries,
  ``t = w2 / (w1 + w2)``. Zero-weight entries are dropped first, so a single remaining entry comes back
  as is: ``[(a, 1), (b, 0)]`` IS ``a``, bit for bit.
- :func:`slerp`: per row, the direction moves along the great circle and the norm linearly; rows with
  a zero side or (anti)parallel directions fall back to a linear mix. Equal norms stay equal.
- :func:`blend`: one step of a transition from the conditioning on screen (``src``) to the new one,
  ``alpha`` in (0, 1]; :func:`blend_alpha` gives ``alpha`` for a block (the first block of a blend over N
  already has 1/N) and :func:`blend_identity` says which transition runs, so one sent during another
  continues from what is on screen (generators keep that source, ``Steering.prev_cond`` is the fallback).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from sfbridge.generators.base import Steering

A = TypeVar("A")  # torch.Tensor or np.ndarray
MIX_MODES = ("linear", "slerp")
EPS = 1e-6  # below this sin(angle), a row pair counts as parallel (slerp falls back to linear)


def _xp(x: Any) -> Any:
    """numpy or torch, whichever ``x`` belongs to (torch only if the caller already imported it)."""
    return np if isinstance(x, np.ndarray) else sys.modules["torch"]


def _up(x: Any) -> Any:
    """float32 at least (float64 stays): the norm and trigonometry are not done in bf16/fp16."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float64)
    return x if x.dtype.itemsize >= 4 and x.is_floating_point() else x.float()


def _down(x: Any, like: Any) -> Any:
    return x.astype(like.dtype) if isinstance(like, np.ndarray) else x.to(like.dtype)


def _norm(x: Any) -> Any:
    return (x * x).sum(-1, keepdims=True) ** 0.5


def _pad(items: Sequence[A]) -> list[A]:
    """Zero rows appended so every item has the longest one's row count (text embeddings of other lengths)."""
    rows = max(x.shape[-2] for x in items) if items[0].ndim >= 2 else None
    if rows is None or all(x.shape[-2] == rows for x in items):
        return list(items)
    xp, out = _xp(items[0]), []
    for x in items:
        z = xp.zeros((*x.shape[:-2], rows, x.shape[-1]), dtype=x.dtype)
        if xp is not np:
            z = z.to(x.device)
        z[..., : x.shape[-2], :] = x
        out.append(z)
    return out


def slerp(a: A, b: A, t: float) -> A:
    """Spherical interpolation per row from ``a`` (t = 0) to ``b`` (t = 1); the endpoints come back exactly."""
    if t <= 0.0:
        return a
    if t >= 1.0:
        return b
    xp = _xp(a)
    a32, b32 = _up(a), _up(b)
    na, nb = _norm(a32), _norm(b32)
    ua = a32 / xp.where(na > 0, na, xp.ones_like(na))
    ub = b32 / xp.where(nb > 0, nb, xp.ones_like(nb))
    theta = xp.arccos(xp.clip((ua * ub).sum(-1, keepdims=True), -1.0, 1.0))
    s = xp.sin(theta)
    ok = (s > EPS) & (na > 0) & (nb > 0)
    safe = xp.where(ok, s, xp.ones_like(s))
    direction = (xp.sin((1.0 - t) * theta) / safe) * ua + (xp.sin(t * theta) / safe) * ub  # unit rows
    out = xp.where(ok, ((1.0 - t) * na + t * nb) * direction, (1.0 - t) * a32 + t * b32)
    return _down(out, a)


def mix(items: Sequence[A], weights: Sequence[float], mode: str = "linear") -> A:
    """One conditioning from a weighted list (see module docstring); ValueError on a bad list or mode."""
    if mode not in MIX_MODES:
        raise ValueError(f"mix must be one of {MIX_MODES}, got {mode!r}")
    if len(items) != len(weights) or not items:
        raise ValueError(f"{len(items)} items vs {len(weights)} weights")
    if mode == "slerp" and len(items) != 2:
        raise ValueError(f"slerp mixes exactly 2 prompts, got {len(items)}")
    if any(not float(w) >= 0.0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be >= 0 and not all 0, got {list(weights)}")
    kept = [(x, float(w)) for x, w in zip(items, weights, strict=True) if w > 0]
    if len(kept) == 1:
        return kept[0][0]  # exactly the single prompt
    xs = _pad([x for x, _ in kept])
    total = sum(w for _, w in kept)
    if mode == "slerp":
        return slerp(xs[0], xs[1], kept[1][1] / total)
    xp = _xp(xs[0])
    ups = [_up(x) for x in xs]
    mean = sum((w / total) * x for x, (_, w) in zip(ups, kept, strict=True))
    target = sum((w / total) * _norm(x) for x, (_, w) in zip(ups, kept, strict=True))
    n = _norm(mean)
    scale = xp.where(n > 0, target / xp.where(n > 0, n, xp.ones_like(n)), xp.ones_like(n))
    return _down(mean * scale, xs[0])


def mix_weighted(pairs: Sequence[tuple[str, float]], mode: str, encode: Callable[[str], A]) -> A:
    """:func:`mix` of ``encode(text)`` over (text, weight) pairs; zero-weight texts are never encoded."""
    if mode == "slerp" and len(pairs) != 2:
        raise ValueError(f"slerp mixes exactly 2 prompts, got {len(pairs)}")
    kept = [(t, float(w)) for t, w in pairs if float(w) > 0]
    if not kept:
        raise ValueError(f"weights must be >= 0 and not all 0, got {[w for _, w in pairs]}")
    if len(kept) == 1:
        return encode(kept[0][0])
    return mix([encode(t) for t, _ in kept], [w for _, w in kept], "linear" if len(kept) != 2 else mode)


def blend(src: A, dst: A, alpha: float, interp: str = "linear") -> A:
    """Conditioning ``alpha`` of the way from ``src`` (on screen) to ``dst`` (new): linear or slerp."""
    if interp not in MIX_MODES:
        raise ValueError(f"interp must be one of {MIX_MODES}, got {interp!r}")
    if alpha >= 1.0:
        return dst
    if interp == "slerp":
        return slerp(src, dst, alpha)
    return alpha * dst + (1.0 - alpha) * src


def blend_path(src: A, dst: A, blocks: int, interp: str = "linear") -> list[A]:
    """The conditionings of the ``blocks`` blocks of a blend: alpha 1/N, 2/N, ..., 1."""
    return [blend(src, dst, k / blocks, interp) for k in range(1, blocks + 1)]


# -- which transition runs, and how far it is -----------------------------------------------------------
def is_blend(s: Steering) -> bool:
    return s.transition == "blend" and s.blend_blocks > 0 and (s.prev_prompt is not None or s.prev_cond is not None)


def blend_alpha(s: Steering, block_index: int) -> float:
    """Weight of the new conditioning in block ``block_index``: 1/N at the landing block, 1.0 from block N on."""
    if not is_blend(s):
        return 1.0
    return float(min(1.0, max(0.0, (block_index - s.since_block + 1) / s.blend_blocks)))


def blend_identity(s: Steering) -> tuple | None:
    """Which blend runs (None: none): a new blend prompt starts a new one, seed/step changes keep it."""
    return (s.cond_key(), s.since_block) if is_blend(s) else None


def prompt_identity(s: Steering) -> tuple:
    """Which prompt change ``s`` carries: a re-cache runs once, at the first block that sees a new one."""
    return (s.cond_key(), s.since_block, s.transition)


def source_key(s: Steering) -> tuple:
    """cond_key() of the blend source when no conditioning was on screen: ``prev_cond``, else ``prev_prompt``."""
    if s.prev_cond is not None:
        return s.prev_cond
    return (((s.prev_prompt or "", 1.0),), "linear")
