"""Attention backends and the choice between them.

Mirrors ``wan/modules/attention.py:attention/flash_attention``. The official code only works
with flash-attn on CUDA (and its SDPA fallback forces bf16); here the backend is a runtime
choice and computes in the input dtype, so fp32 runs match the goldens. No masks: causal
structure comes from what the KV cache holds, and cross-attention is unmasked by design.

Backends:
- ``fa3``: FlashAttention 3 (``flash_attn_interface``, built from flash-attention's ``hopper/``),
  sm90 only, fp16/bf16. The fastest kernel on H100/H200.
- ``cudnn``: torch SDPA restricted to its cuDNN backend, where this torch build offers it
  (sm80+, fp16/bf16). On Hopper it beats FA2; torch's default SDPA order may not pick it.
- ``fa2`` (alias ``flash``): the ``flash_attn`` package, sm80+, fp16/bf16.
- ``sdpa``: plain ``F.scaled_dot_product_attention``; torch picks the kernel; any device, any dtype.
- ``manual``: softmax in fp32, written out; the reference for tests.

``auto`` takes the first of fa3, cudnn, fa2, sdpa that can run. The decision is a pure function
of :class:`AttnFacts` (:func:`choose_backend`), so every combination is tested on CPU; only
:func:`probe_facts` looks at the machine. FA2/FA3 are wrapped as ``torch.library`` custom ops
with a fake kernel, so ``torch.compile(fullgraph=True)`` traces through them without a break.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

log = logging.getLogger(__name__)

try:  # optional: pip install sfbridge[cuda]
    from flash_attn import flash_attn_func  # type: ignore[import-not-found]
except Exception:  # ImportError, or a broken CUDA build
    flash_attn_func = None
try:  # optional: FA3, built from flash-attention's hopper/ folder
    from flash_attn_interface import flash_attn_func as fa3_func  # type: ignore[import-not-found]
except Exception:
    fa3_func = None

AUTO_ORDER = ("fa3", "cudnn", "fa2", "sdpa")
ALIASES = {"flash": "fa2"}  # the name before FA3 and cuDNN existed here
BACKENDS = ("auto", *AUTO_ORDER, "manual", *ALIASES)
HALF = (torch.float16, torch.bfloat16)
PROBE_HEAD_DIM = 128  # Wan2.1's head_dim; what torch is asked about when probing cuDNN attention


class AttentionBackendError(RuntimeError):
    """A forced backend cannot run here; the message names each missing requirement."""


@dataclass(frozen=True)
class AttnFacts:
    """Everything the choice depends on. ``capability`` is None off CUDA (or when unknown)."""

    device_type: str
    capability: tuple[int, int] | None
    dtype: torch.dtype
    fa3_installed: bool = False
    fa2_installed: bool = False
    cudnn_attention: bool = False  # torch says SDPA's cuDNN backend can run this dtype on this GPU


def _arch(cap: tuple[int, int] | None) -> str:
    return "unknown" if cap is None else f"sm{cap[0]}{cap[1]}"


def missing_requirements(backend: str, f: AttnFacts) -> list[str]:
    """What ``backend`` lacks under facts ``f`` (empty: it can run). Pure: no probing."""
    backend = ALIASES.get(backend, backend)
    if backend in ("sdpa", "manual"):
        return []
    need: list[str] = []
    if f.device_type != "cuda":
        need.append(f"a CUDA device (this is {f.device_type})")
    elif backend == "fa3" and (f.capability is None or f.capability[0] != 9):
        need.append(f"an sm90 (Hopper) GPU (this GPU is {_arch(f.capability)})")
    elif backend == "fa2" and (f.capability is None or f.capability < (8, 0)):
        need.append(f"an sm80+ (Ampere or newer) GPU (this GPU is {_arch(f.capability)})")
    if f.dtype not in HALF:
        need.append(f"fp16 or bf16 (got {str(f.dtype).removeprefix('torch.')})")
    if backend == "fa3" and not f.fa3_installed:
        need.append("the package flash_attn_interface (FA3: build flash-attention's hopper/ folder), not importable")
    elif backend == "fa2" and not f.fa2_installed:
        need.append("the package flash_attn (flash-attn 2: pip install sfbridge[cuda]), not importable")
    elif backend == "cudnn" and f.device_type == "cuda" and f.dtype in HALF and not f.cudnn_attention:
        need.append(f"cuDNN attention in torch {torch.__version__} on {_arch(f.capability)} "
                    "(torch.backends.cuda.can_use_cudnn_attention says no: no cuDNN 9, GPU too old, or disabled)")
    return need


def choose_backend(requested: str, facts: AttnFacts) -> tuple[str, str]:
    """(backend, reason) for ``requested`` under ``facts``; pure, so it is tested for every combination.

    ``auto`` walks :data:`AUTO_ORDER`; the reason says why the winner runs and why each one
    before it did not. A forced backend that cannot run raises :class:`AttentionBackendError`.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}, choose from {BACKENDS}")
    where = f"{facts.device_type} {_arch(facts.capability)}" if facts.device_type == "cuda" else facts.device_type
    dtype = str(facts.dtype).removeprefix("torch.")
    if requested != "auto":
        name = ALIASES.get(requested, requested)
        need = missing_requirements(name, facts)
        if need:
            label = "fa2 (flash-attn)" if name == "fa2" else name
            raise AttentionBackendError(f"attention backend {label} cannot run here: needs " + "; needs ".join(need))
        return name, f"forced (--attn {requested}) on {where}, {dtype}"
    if facts.device_type != "cuda":
        return "sdpa", f"auto on {where}, {dtype}: sdpa (fa3, cudnn and fa2 need a CUDA device)"
    skipped = []
    for name in AUTO_ORDER:
        need = missing_requirements(name, facts)
        if not need:
            why = f"auto on {where}, {dtype}: first of {'/'.join(AUTO_ORDER)} that runs"
            return name, why + (f" ({'; '.join(skipped)})" if skipped else "")
        skipped.append(f"{name}: needs " + " and ".join(need))
    raise AssertionError("unreachable: sdpa has no requirements")


# -- probing the machine (the only impure part) ---------------------------------------------------


def _cudnn_attention_ok(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Ask torch itself whether SDPA's cuDNN backend takes [1, heads, L, head_dim] in ``dtype`` here."""
    if device.type != "cuda" or not torch.cuda.is_available() or dtype not in HALF:
        return False
    if not hasattr(SDPBackend, "CUDNN_ATTENTION") or not torch.backends.cudnn.is_available():
        return False
    if not torch.backends.cuda.cudnn_sdp_enabled():
        return False
    q = torch.zeros(1, 2, 64, head_dim, device=device, dtype=dtype)
    try:
        params = torch.backends.cuda.SDPAParams(q, q, q, None, 0.0, False, False)
        return bool(torch.backends.cuda.can_use_cudnn_attention(params, False))
    except (RuntimeError, TypeError) as e:  # an older signature or a broken build: not offered
        log.debug("cuDNN attention probe failed: %s", e)
        return False


_FACTS: dict[tuple[str, torch.dtype, int], AttnFacts] = {}


def probe_facts(device: torch.device | str, dtype: torch.dtype, head_dim: int = PROBE_HEAD_DIM) -> AttnFacts:
    """The facts for ``device``/``dtype`` on this machine (cached: the cuDNN probe allocates)."""
    device = torch.device(device)
    key = (str(device), dtype, head_dim)
    if key not in _FACTS:
        cap = None
        if device.type == "cuda" and torch.cuda.is_available():
            cap = tuple(torch.cuda.get_device_capability(device))
        _FACTS[key] = AttnFacts(device.type, cap, dtype, fa3_installed=fa3_func is not None,
                                fa2_installed=flash_attn_func is not None,
                                cudnn_attention=_cudnn_attention_ok(device, dtype, head_dim))
    return _FACTS[key]


def explain_backend(requested: str, device: torch.device | str, dtype: torch.dtype,
                    head_dim: int = PROBE_HEAD_DIM) -> tuple[str, str]:
    """(backend, reason) on this machine: what ``status`` and ``doctor`` print."""
    return choose_backend(requested, probe_facts(device, dtype, head_dim))


@torch.compiler.assume_constant_result
def _select(requested: str, device: str, dtype: torch.dtype) -> str:
    return choose_backend(requested, probe_facts(device, dtype))[0]


def select_backend(requested: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """The backend name only (see :func:`explain_backend`); a constant to ``torch.compile``."""
    return _select(requested, str(torch.device(device)), dtype)


def flash_available() -> bool:
    """flash-attn 2 installed and a CUDA device present (benchmarks)."""
    return flash_attn_func is not None and torch.cuda.is_available()


# -- kernels --------------------------------------------------------------------------------------


def register_attention_op(qualname: str, kernel: Callable[[], Callable | None], package: str):
    """A ``torch.library`` custom op ``qualname(q, k, v) -> out`` around ``kernel()`` with a fake kernel.

    Why: dynamo cannot trace into the flash-attn extensions; a custom op with a fake (shape-only)
    implementation is one opaque node in the graph, so ``fullgraph=True`` holds. ``kernel`` is
    looked up at call time, so the op exists (and its fake kernel is testable) without the package.
    """

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        fn = kernel()
        if fn is None:
            raise AttentionBackendError(f"{qualname}: the package {package} is not importable")
        out = fn(q, k, v)
        return (out[0] if isinstance(out, tuple) else out).contiguous()  # some FA3 builds return (out, lse)

    op = torch.library.custom_op(qualname, run, mutates_args=())

    @op.register_fake
    def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return q.new_empty(*q.shape[:-1], v.shape[-1])  # [B, Lq, H, Dv]

    return op


fa2_op = register_attention_op("sfbridge::fa2", lambda: flash_attn_func, "flash_attn")
fa3_op = register_attention_op("sfbridge::fa3", lambda: fa3_func, "flash_attn_interface")


def manual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The reference: plain softmax in float32, same layout as :func:`attention`."""
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / math.sqrt(q.shape[-1])
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.float()).to(q.dtype)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D].

    ``backend`` is a resolved name (not ``auto``): see :func:`select_backend`.
    """
    assert q.ndim == 4 and k.shape == v.shape and q.shape[0::2] == k.shape[0::2], (
        f"q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)}")
    if backend == "fa3":
        return fa3_op(q, k, v)
    if backend in ("fa2", "flash"):
        return fa2_op(q, k, v)
    if backend == "cudnn":
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return _sdpa(q, k, v)
    if backend == "manual":
        return manual_attention(q, k, v)
    assert backend == "sdpa", f"attention(): backend {backend!r} is not a resolved backend name"
    return _sdpa(q, k, v)
