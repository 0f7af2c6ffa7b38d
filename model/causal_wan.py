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
from .kv_cache import CacheView, CrossAttnCache
from .rope import RoPE, apply_rope

Rope = tuple[torch.Tensor, torch.Tensor] | torch.Tensor  # fp32 (cos, sin), or complex128 reference


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

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(cfg.dim, cfg.dim)
        self.v = nn.Linear(cfg.dim, cfg.dim)
        self.o = nn.Linear(cfg.dim, cfg.dim)
        self.norm_q = RMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()


class SelfAttention(AttentionProjections):
    def forward(self, x: torch.Tensor, rope: Rope, k_cache: torch.Tensor, v_cache: torch.Tensor,
                slots: torch.Tensor, backend: str) -> torch.Tensor:
        """Write this call's roped K and raw V into ``slots`` of the layer's cache, attend the whole view."""
        B, L, _ = x.shape
        n, d = self.num_heads, self.head_dim
        q = self.norm_q(self.q(x)).view(B, L, n, d)  # [B, L, heads, head_dim]; qk norm before split
        k = self.norm_k(self.k(x)).view(B, L, n, d)
        v = self.v(x).view(B, L, n, d)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        k_cache.index_copy_(1, slots, k)
        v_cache.index_copy_(1, slots, v)
        # previous blocks' clean K/V + this block (order irrelevant: no mask, keys carry positions)
        return self.o(attention(q, k_cache, v_cache, backend).flatten(2))


class CrossAttention(AttentionProjections):
    def fill(self, context: torch.Tensor, k_out: torch.Tensor, v_out: torch.Tensor) -> None:
        """Text keys/values of this layer into the static cache buffers (on a prompt change only)."""
        B = context.shape[0]
        k_out.copy_(self.norm_k(self.k(context)).view(B, -1, self.num_heads, self.head_dim))
        v_out.copy_(self.v(context).view(B, -1, self.num_heads, self.head_dim))

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.norm_q(self.q(x)).view(B, L, self.num_heads, self.head_dim)
        # unmasked over all text_len positions, zero padding included (official behaviour)
        return self.o(attention(q, k, v, backend).flatten(2))


class AttentionBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = LayerNorm(cfg.dim, cfg.eps)
        self.self_attn = SelfAttention(cfg)
        self.norm3 = LayerNorm(cfg.dim, cfg.eps, affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = LayerNorm(cfg.dim, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e0: torch.Tensor, rope: Rope, k_cache: torch.Tensor, v_cache: torch.Tensor,
                slots: torch.Tensor, cross_k: torch.Tensor, cross_v: torch.Tensor, backend: str) -> torch.Tensor:
        """One layer. Everything it reads or writes is an argument (no layer index, no Python-int state):
        one compiled graph serves every layer."""
        B, L, C = x.shape
        F = e0.shape[1]  # frames with their own timestep (1 = the whole block shares one)
        # e0 [B|1, F, 6, dim] -> 6 x [B|1, F, 1, dim], broadcast over the tokens of each frame
        m = (self.modulation.unsqueeze(1) + e0).chunk(6, dim=2)
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = m

        def per_frame(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(1, (F, L // F))  # [B, F, S, dim]

        y = per_frame(self.norm1(x)) * (1 + scale_sa) + shift_sa
        y = self.self_attn(y.flatten(1, 2), rope, k_cache, v_cache, slots, backend)
        x = x + (per_frame(y) * gate_sa).flatten(1, 2)
        x = x + self.cross_attn(self.norm3(x), cross_k, cross_v, backend)  # no gate, no modulation
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
    """Flow-prediction DiT. ``forward`` runs one cached generator call on one block.

    The call is split in three pieces that can each be compiled (:meth:`set_compile`): embedding
    (patchify + time MLP), one layer (the same graph for all layers), head (+ unpatchify). All cache
    bookkeeping (slots, positions, rebasing) happens outside, in :class:`KVCache` and the pipeline.
    """

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
        self.blocks = nn.ModuleList([AttentionBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)
        self.rope = RoPE(cfg.head_dim)  # float64 reference; not a parameter: not in the checkpoint
        self._fns = (self._embed, _layer, self._head)  # eager, or compiled by set_compile()

    # -- set-up steps (outside the graph) ----------------------------------------------------
    def set_compile(self, enabled: bool = True, backend: object = "inductor", mode: str | None = None) -> None:
        """torch.compile(fullgraph=True, dynamic=False) of embedding, layer and head, or back to eager.

        Per layer rather than per pass: one small graph is traced and compiled once and reused by all
        layers, so start-up costs one layer's compile per shape instead of a 30-layer graph.
        """
        if not enabled:
            self._fns = (self._embed, _layer, self._head)
            return
        opts: dict[str, object] = dict(fullgraph=True, dynamic=False, backend=backend)
        if mode is not None:
            opts["mode"] = mode
        self._fns = tuple(torch.compile(f, **opts) for f in (self._embed, _layer, self._head))

    @property
    def compiled(self) -> bool:
        return self._fns[1] is not _layer

    def time_features(self, t: torch.Tensor | float) -> torch.Tensor:
        """Sinusoid of timesteps (float64 on the host, like official), cast to the model dtype, on its device.

        ``t`` [B, F] gives [B, F, freq_dim]; a float gives [1, 1, freq_dim] (the whole block shares it).
        Call it when the step list changes, not per pass.
        """
        p = self.patch_embedding.weight
        t = torch.tensor([[float(t)]]) if not isinstance(t, torch.Tensor) else t
        sin = sinusoidal_embedding_1d(self.cfg.freq_dim, t.detach().cpu().flatten()).to(p.dtype)
        return sin.view(*t.shape, -1).to(p.device, non_blocking=True)  # pageable source: safe to reuse

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """[B, Lt <= text_len, text_dim] -> zero-pad to text_len -> text MLP -> [B, text_len, dim]."""
        B, Lt, Dt = context.shape
        assert Lt <= self.cfg.text_len and Dt == self.cfg.text_dim, (
            f"context {tuple(context.shape)} vs text_len {self.cfg.text_len}, text_dim {self.cfg.text_dim}")
        if Lt < self.cfg.text_len:
            context = torch.cat([context, context.new_zeros(B, self.cfg.text_len - Lt, Dt)], dim=1)
        return self.text_embedding(context)

    def fill_cross(self, context: torch.Tensor, cross: CrossAttnCache) -> None:
        """Text context [B, <= text_len, text_dim] -> every layer's cross-attention K/V (prompt change)."""
        ctx = self.embed_text(context.to(self.patch_embedding.weight.dtype))
        for i, block in enumerate(self.blocks):
            block.cross_attn.fill(ctx, cross.k[i], cross.v[i])
        cross.is_init = True

    def backend_for(self, device: torch.device, dtype: torch.dtype) -> str:
        """'auto': flash-attn if installed, on CUDA and fp16/bf16, else SDPA."""
        return select_backend("auto", device, dtype) if self.attn_backend == "auto" else self.attn_backend

    # -- one generator call --------------------------------------------------------------------
    def _embed(self, x: torch.Tensor, t_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dtype = self.patch_embedding.weight.dtype
        xp = self.patch_embedding(x.permute(0, 2, 1, 3, 4).to(dtype))  # [B, dim, f, h, w]
        xs = xp.flatten(2).transpose(1, 2)  # [B, L, dim], tokens in (frame, row, column) order
        e = self.time_embedding(t_feat)  # [B|1, F|1, dim]
        e0 = self.time_projection(e).unflatten(-1, (6, self.cfg.dim))  # [B|1, F|1, 6, dim]
        return xs, e, e0

    def _head(self, xs: torch.Tensor, e: torch.Tensor, F: int, H: int, W: int) -> torch.Tensor:
        cfg = self.cfg
        B = xs.shape[0]
        pt, ph, pw = cfg.patch_size
        f, h, w = F // pt, H // ph, W // pw
        out = self.head(xs, e.unsqueeze(2))  # [B, F', S, pt*ph*pw*C_out]
        # unpatchify: token outputs ordered (pt, ph, pw, C) with channel fastest
        out = out.reshape(B, f, h, w, pt, ph, pw, cfg.out_dim)
        out = torch.einsum("bfhwpqrc->bfpchqwr", out)
        return out.reshape(B, F, cfg.out_dim, H, W)  # [B, F, C_out, H, W]

    def forward(self, x: torch.Tensor, t_feat: torch.Tensor, rope: Rope, view: CacheView,
                cross: CrossAttnCache) -> torch.Tensor:
        """Flow prediction for latents x [B, F, C, H, W].

        ``t_feat``: :meth:`time_features` of the timestep(s); ``rope``: (cos, sin) of the block's tokens
        (:class:`~.rope.RopeTable`); ``view``: :meth:`KVCache.begin` of this call; ``cross`` filled by
        :meth:`fill_cross`.
        """
        cfg = self.cfg
        B, F, C, H, W = x.shape
        pt, ph, pw = cfg.patch_size
        assert C == cfg.in_dim and H % ph == 0 and W % pw == 0 and F % pt == 0, f"bad x {tuple(x.shape)}"
        assert cross.is_init, "cross-attention cache is empty: fill_cross() first"
        embed, layer, head = self._fns
        xs, e, e0 = embed(x, t_feat)
        backend = self.backend_for(xs.device, xs.dtype)
        for i, block in enumerate(self.blocks):
            xs = layer(block, xs, e0, rope, view.k[i], view.v[i], view.slots, cross.k[i], cross.v[i], backend)
        return head(xs, e, F, H, W)

    def rewrite_kv(self, x: torch.Tensor, t_feat: torch.Tensor, rope: Rope, k_cache: list[torch.Tensor],
                   v_cache: list[torch.Tensor], attend: torch.Tensor, own: torch.Tensor,
                   cross: CrossAttnCache) -> None:
        """KV re-cache of frames already in the cache: their K/V go back to slots ``own``, attending ``attend``.

        ``attend`` (token slots, ending with ``own``) is a subset of the buffer, so each layer attends a gathered
        copy (one layer's worth of memory at a time) and its new K/V are scattered back to ``own``; the head is
        skipped (only K/V matter). Always eager, never through the compiled passes: it is rare and its lengths
        vary, and the compiled graphs stay untouched (no recompile).
        """
        assert cross.is_init, "cross-attention cache is empty: fill_cross() first"
        xs, _, e0 = self._embed(x, t_feat)
        backend = self.backend_for(xs.device, xs.dtype)
        n, total = own.shape[0], attend.shape[0]
        local = torch.arange(total - n, total, device=attend.device)  # own tokens = the tail of the gather
        for i, block in enumerate(self.blocks):
            k, v = k_cache[i].index_select(1, attend), v_cache[i].index_select(1, attend)
            xs = block(xs, e0, rope, k, v, local, cross.k[i], cross.v[i], backend)
            k_cache[i].index_copy_(1, own, k[:, total - n:])
            v_cache[i].index_copy_(1, own, v[:, total - n:])


def _layer(block: AttentionBlock, *args: object) -> torch.Tensor:
    """A free function (not a bound method), so one compiled code object serves every layer."""
    return block(*args)
