"""Attention backends: torch SDPA (default) and flash-attn (CUDA, fp16/bf16, when installed).

Mirrors ``wan/modules/attention.py:attention/flash_attention``. The official code only works
with flash-attn on CUDA (and its SDPA fallback forces bf16); here the backend is a runtime
choice and computes in the input dtype, so fp32 runs match the goldens. No masks: causal
structure comes from what the KV cache holds, and cross-attention is unmasked by design.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

try:  # optional: pip install sfbridge[cuda]
    from flash_attn import flash_attn_func  # type: ignore[import-not-found]
except Exception:  # ImportError, or a broken CUDA build
    flash_attn_func = None

BACKENDS = ("auto", "sdpa", "flash", "manual")


def flash_available() -> bool:
    return flash_attn_func is not None and torch.cuda.is_available()


def select_backend(requested: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """Resolve 'auto' to 'flash' (installed, CUDA, half precision) or 'sdpa'; validate the rest."""
    assert requested in BACKENDS, f"unknown attention backend {requested!r}, choose from {BACKENDS}"
    device = torch.device(device)
    half = dtype in (torch.float16, torch.bfloat16)
    flash_ok = flash_attn_func is not None and device.type == "cuda" and half
    if requested == "auto":
        return "flash" if flash_ok else "sdpa"
    if requested == "flash" and not flash_ok:
        raise RuntimeError(f"flash-attn needs the flash_attn package, a CUDA device and fp16/bf16 "
                           f"(installed={flash_attn_func is not None}, device={device}, dtype={dtype})")
    return requested


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D]."""
    assert q.ndim == 4 and k.shape == v.shape and q.shape[0::2] == k.shape[0::2], (
        f"q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)}")
    if backend == "flash":
        return flash_attn_func(q, k, v)
    if backend == "manual":  # reference for tests: plain softmax in float32
        s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / math.sqrt(q.shape[-1])
        return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.float()).to(q.dtype)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
