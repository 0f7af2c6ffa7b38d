"""Causal Wan2.1 DiT with KV-cached block-wise inference (Self Forcing's generator).

Mirrors ``wan/modules/causal_model.py:CausalWanModel._forward_inference`` and the modules it
uses from ``wan/modules/model.py`` (WanRMSNorm, WanLayerNorm, WanT2VCrossAttention, Head).
Parameter names are those of the official state dict after stripping the leading ``model.``,
so ``load_state_dict(strict=True)`` takes the official checkpoint as is.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .attention import attention, select_backend
from .config import ModelConfig
from .kv_cache import CrossAttnCache, KVCache
from .rope import RoPE


def sinusoidal_embedding_1d(dim: int, position: torch.Tensor) -> torch.Tensor:
    """[cos(t w_i), sin(t w_i)], w_i = 10000^(-i/half), in float64 like the official code."""
    assert dim % 2 == 0, f"freq_dim {dim} must be even"
    half = dim // 2
    position = position.to(torch.float64)
    sinusoid = torch.outer(position, torch.pow(10000, -torch.arange(half).to(position).div(half)))
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) in float32, cast back, times a learned weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (affine only for norm3)."""

    def __init__(self, dim: int, eps: float, affine: bool = False) -> None:
        super().__init__(dim, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return nn.functional.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class AttentionProjections(nn.Module):
    """q/k/v/o projections and the qk RMSNorms shared by self- and cross-attention (same keys)."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.num_heads, self.head_dim = layer, cfg.num_heads, cfg.head_dim
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(cfg.dim, cfg.dim)
        self.v = nn.Linear(cfg.dim, cfg.dim)
        self.o = nn.Linear(cfg.dim, cfg.dim)
        self.norm_q = RMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()


class SelfAttention(AttentionProjections):
    def forward(self, x: torch.Tensor, freqs: torch.Tensor, cache: KVCache, backend: str) -> torch.Tensor:
        B, L, _ = x.shape
        n, d = self.num_heads, self.head_dim
        q = self.norm_q(self.q(x)).view(B, L, n, d)  # [B, L, heads, head_dim]; qk norm before split
        k = self.norm_k(self.k(x)).view(B, L, n, d)
        v = self.v(x).view(B, L, n, d)
        q, k = RoPE.apply(q, freqs), RoPE.apply(k, freqs)
        cache.write(self.layer, k, v)
        k_win, v_win = cache.window(self.layer)  # previous blocks' clean K/V + this block
        return self.o(attention(q, k_win, v_win, backend).flatten(2))


class CrossAttention(AttentionProjections):
    def forward(self, x: torch.Tensor, context: torch.Tensor | None, cache: CrossAttnCache,
                backend: str) -> torch.Tensor:
        B, L, _ = x.shape
        n, d = self.num_heads, self.head_dim
        q = self.norm_q(self.q(x)).view(B, L, n, d)
        if context is not None:  # first call after a (prompt) reset: fill the cache
            cache.k[self.layer] = self.norm_k(self.k(context)).view(B, -1, n, d)
            cache.v[self.layer] = self.v(context).view(B, -1, n, d)
        # unmasked over all text_len positions, zero padding included (official behaviour)
        return self.o(attention(q, cache.k[self.layer], cache.v[self.layer], backend).flatten(2))


class AttentionBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm(cfg.dim, cfg.eps)
        self.self_attn = SelfAttention(cfg, layer)
        self.norm3 = LayerNorm(cfg.dim, cfg.eps, affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(cfg, layer)
        self.norm2 = LayerNorm(cfg.dim, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e0: torch.Tensor, freqs: torch.Tensor, context: torch.Tensor | None,
                kv: KVCache, cross: CrossAttnCache, backend: str) -> torch.Tensor:
        B, L, C = x.shape
        F = e0.shape[1]
        # e0 [B, F, 6, dim] -> 6 x [B, F, 1, dim], broadcast over the tokens of each frame
        m = (self.modulation.unsqueeze(1) + e0).chunk(6, dim=2)
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = m

        def per_frame(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(1, (F, L // F))  # [B, F, S, dim]

        y = per_frame(self.norm1(x)) * (1 + scale_sa) + shift_sa
        y = self.self_attn(y.flatten(1, 2), freqs, kv, backend)
        x = x + (per_frame(y) * gate_sa).flatten(1, 2)
        x = x + self.cross_attn(self.norm3(x), context, cross, backend)  # no gate, no modulation
        y = self.ffn((per_frame(self.norm2(x)) * (1 + scale_ff) + shift_ff).flatten(1, 2))
        return x + (per_frame(y) * gate_ff).flatten(1, 2)


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = LayerNorm(cfg.dim, cfg.eps)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # e: [B, F, 1, dim] -- the time embedding itself, not the 6x projection
        F = e.shape[1]
        shift, scale = (self.modulation.unsqueeze(1) + e).chunk(2, dim=2)
        x = self.norm(x).unflatten(1, (F, x.shape[1] // F))  # [B, F, S, dim]
        return self.head(x * (1 + scale) + shift)  # [B, F, S, pt*ph*pw*out_dim]


class CausalWanModel(nn.Module):
    """Flow-prediction DiT. ``forward`` runs one cached generator call on one block."""

    def __init__(self, cfg: ModelConfig, attn_backend: str = "auto") -> None:
        super().__init__()
        self.cfg = cfg
        self.attn_backend = attn_backend
        p = cfg.patch_size
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=p, stride=p)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList([AttentionBlock(cfg, i) for i in range(cfg.num_layers)])
        self.head = Head(cfg)
        self.rope = RoPE(cfg.head_dim)  # not a parameter: not in the checkpoint

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """[B, Lt <= text_len, text_dim] -> zero-pad to text_len -> text MLP -> [B, text_len, dim]."""
        B, Lt, Dt = context.shape
        assert Lt <= self.cfg.text_len and Dt == self.cfg.text_dim, (
            f"context {tuple(context.shape)} vs text_len {self.cfg.text_len}, text_dim {self.cfg.text_dim}")
        if Lt < self.cfg.text_len:
            context = torch.cat([context, context.new_zeros(B, self.cfg.text_len - Lt, Dt)], dim=1)
        return self.text_embedding(context)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None, kv: KVCache,
                cross: CrossAttnCache, current_start: int,
                rope_start_frame: int | None = None) -> torch.Tensor:
        """Flow prediction for latents x [B, F, C, H, W] at per-frame timesteps t [B, F].

        ``current_start`` is the absolute token offset of the block (cache bookkeeping);
        ``rope_start_frame`` is its RoPE frame position (== current_start // tokens_per_frame
        unless the pipeline rebased). ``context`` is only needed when ``cross`` is not filled.
        """
        cfg = self.cfg
        B, F, C, H, W = x.shape
        pt, ph, pw = cfg.patch_size
        assert C == cfg.in_dim and H % ph == 0 and W % pw == 0 and F % pt == 0, f"bad x {tuple(x.shape)}"
        assert t.shape == (B, F), f"t {tuple(t.shape)} must be [B, F] = [{B}, {F}]"
        f, h, w = F // pt, H // ph, W // pw
        tokens_per_frame = h * w
        if rope_start_frame is None:
            rope_start_frame = current_start // tokens_per_frame

        dtype = self.patch_embedding.weight.dtype
        xp = self.patch_embedding(x.permute(0, 2, 1, 3, 4).to(dtype))  # [B, dim, f, h, w]
        xs = xp.flatten(2).transpose(1, 2)  # [B, L, dim], tokens in (frame, row, column) order
        L = xs.shape[1]

        e = self.time_embedding(sinusoidal_embedding_1d(cfg.freq_dim, t.flatten()).to(dtype))  # [B*F, dim]
        e0 = self.time_projection(e).unflatten(1, (6, cfg.dim)).unflatten(0, (B, F))  # [B, F, 6, dim]

        ctx = None
        if not cross.is_init:
            assert context is not None, "cross-attention cache is empty: pass the text context"
            ctx = self.embed_text(context.to(dtype))
        freqs = self.rope.freqs(rope_start_frame, f, h, w, xs.device)  # [1, L, 1, head_dim/2]
        kv.begin(current_start, L)
        backend = self.attn_backend  # "auto": flash-attn if installed, on CUDA and fp16/bf16, else SDPA
        if backend == "auto":
            backend = select_backend("auto", xs.device, dtype)
        for block in self.blocks:
            xs = block(xs, e0, freqs, ctx, kv, cross, backend)
        cross.is_init = True

        out = self.head(xs, e.unflatten(0, (B, F)).unsqueeze(2))  # [B, F, S, pt*ph*pw*C_out]
        # unpatchify: token outputs ordered (pt, ph, pw, C) with channel fastest
        out = out.view(B, f, h, w, pt, ph, pw, cfg.out_dim)
        out = torch.einsum("bfhwpqrc->bfpchqwr", out)
        return out.reshape(B, F, cfg.out_dim, H, W)  # [B, F, C_out, H, W]
