"""Building blocks of the Wan2.1 VAE, shared by the decoder (vae.py) and encoder (vae_encoder.py).

Mirrors `wan/modules/vae.py` (`CausalConv3d`, `RMS_norm`, `ResidualBlock`, `AttentionBlock`,
`Resample` in its upsample modes; Self-Forcing commit 33593df). Parameter names are the
official ones, so the modules that own these blocks load `Wan2.1_VAE.pth` keys unchanged.

Streaming: the official code carries, for every causal 3D conv, the last 2 frames of that conv's
input (`feat_cache`). Here that state is a `FeatureCache` object and each
`CausalConv3d.forward(x, cache)` prepends what it saw last, so decoding (or encoding) block by
block equals doing it all at once. Slots are assigned by the owning decoder/encoder in call order.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

CACHE_T = 2  # frames of history a k=3 causal conv needs


class FeatureCache:
    """Per-conv streaming state: slot -> the last <= CACHE_T input frames [B, C, t, H, W].

    A slot that exists with 0 frames means "stream started, nothing to remember yet" (used by
    the temporal upsamplers, which skip the first frame). `reset()` starts a new stream.
    """

    def __init__(self) -> None:
        self.frames: dict[int, torch.Tensor] = {}

    def reset(self) -> None:
        self.frames.clear()

    def get(self, slot: int) -> torch.Tensor | None:
        return self.frames.get(slot)

    def put(self, slot: int, x: torch.Tensor, keep: int = CACHE_T) -> None:
        # clone: a slice would pin the whole block's activation in memory
        self.frames[slot] = x[:, :, -keep:].detach().clone()

    def __len__(self) -> int:
        return len(self.frames)


class CausalConv3d(nn.Conv3d):
    """Conv3d padded only in the past along time; with a cache, the past is the previous call's input."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        pt, ph, pw = self.padding
        self.time_pad = 2 * pt  # k=3 -> 2 frames of history, k=1 -> none
        self.space_pad = (pw, pw, ph, ph)
        self.padding = (0, 0, 0)
        self.slot = -1  # assigned by the owning decoder (call order, as the official feat_idx)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        if self.time_pad > 0 and cache is not None:
            past = cache.get(self.slot)
            if past is not None:
                x = torch.cat([past.to(x.dtype), x], dim=2)
                n_past = past.shape[2]
            else:
                n_past = 0
            cache.put(self.slot, x)
            pad_t = max(self.time_pad - n_past, 0)
        else:
            pad_t = self.time_pad
        x = F.pad(x, (*self.space_pad, pad_t, 0))  # [B, C, pad_t + t, H + 2ph, W + 2pw]
        return super().forward(x)


class RMSNorm(nn.Module):
    """Wan `RMS_norm`: L2-normalise over channels, times sqrt(C) * gamma (key `gamma`)."""

    def __init__(self, dim: int, images: bool) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """RMS, SiLU, conv3, RMS, SiLU, dropout, conv3 (+ 1x1x1 shortcut when widths differ)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, images=False),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
        h = self.shortcut(x)  # 1x1x1: needs no history, not cached (as official)
        for layer in self.residual:
            x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no temporal mixing)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        B, C, T, H, W = x.shape
        h = x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)
        qkv = self.to_qkv(self.norm(h))  # [BT, 3C, H, W]
        q, k, v = qkv.reshape(B * T, 1, 3 * C, H * W).transpose(2, 3).chunk(3, dim=-1)  # [BT, 1, HW, C]
        h = F.scaled_dot_product_attention(q, k, v)
        h = self.proj(h.squeeze(1).transpose(1, 2).reshape(B * T, C, H, W))
        return x + h.reshape(B, T, C, H, W).permute(0, 2, 1, 3, 4)


class Resample(nn.Module):
    """2x nearest upsample + 3x3 conv (halving channels); `upsample3d` first doubles time.

    The time doubling is a causal (3,1,1) conv to 2C channels whose halves become two output
    frames. The first frame of a stream skips it (one latent frame -> one image), and the
    second frame sees zero padding instead of the first frame's features (official behaviour).
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        assert mode in ("upsample2d", "upsample3d"), f"decoder-only Resample, got mode {mode}"
        self.resample = nn.Sequential(
            nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"), nn.Conv2d(dim, dim // 2, 3, padding=1)
        )
        self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0)) if mode == "upsample3d" else None

    def forward(self, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
        B, C, T, H, W = x.shape
        if self.time_conv is not None:
            head = x[:, :, :0]
            if cache is None or cache.get(self.time_conv.slot) is None:
                head, x = x[:, :, :1], x[:, :, 1:]  # stream start: frame 0 passes through once
                if cache is not None:
                    cache.put(self.time_conv.slot, x[:, :, :0])  # started, no history yet
            if x.shape[2] > 0:
                t = x.shape[2]
                y = self.time_conv(x, cache).reshape(B, 2, C, t, H, W)  # halves = 2 frames
                x = torch.stack((y[:, 0], y[:, 1]), dim=3).reshape(B, C, 2 * t, H, W)  # interleave
            x = torch.cat([head, x], dim=2)
        T = x.shape[2]
        x = x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)
        x = self.resample[1](self.resample[0](x.float()).to(x.dtype))  # upsample in fp32, as official
        return x.reshape(B, T, C // 2, 2 * H, 2 * W).permute(0, 2, 1, 3, 4)


def run_stages(
    x: torch.Tensor, cache: FeatureCache | None, conv1: CausalConv3d, blocks: list[nn.Module], head: nn.Sequential
) -> torch.Tensor:
    """The pass Decoder3d and Encoder3d share: conv1, the blocks (each takes the cache), then the
    head (RMSNorm, SiLU, causal conv; only the conv takes the cache)."""
    x = conv1(x, cache)
    for layer in blocks:
        x = layer(x, cache)
    for layer in head:
        x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
    return x
