"""Wan2.1 VAE encoder with an exact streaming feature cache, and the strict whole-file loader.

Mirrors `wan/modules/vae.py` (`Resample` in its downsample modes, `Encoder3d`, `WanVAE_.encode`)
and the latent normalisation of `utils/wan_wrapper.py:WanVAEWrapper.encode_to_latent`
(Self-Forcing commit 33593df). Building blocks shared with the decoder come from vae_blocks.py.

Why: video-to-video feeds the game's own frames through the encoder one block at a time, so the
encoder streams like the decoder does: every causal conv remembers the last 2 frames of its input
in a `FeatureCache`, and each temporal downsampler (a (3,1,1) conv with stride 2 and no padding)
remembers its last input frame. The official `encode` walks pixel frames as 1, 4, 4, ... with
that cache; the first chunk skips the temporal downsamplers (frame 0 becomes latent 0 on its own).
Because the state is exact, any chunking of the stream gives the same latents as one call.

Frames: the first frame of a scene gives one latent frame, every later 4 frames one more, so a
scene's first block of 9 pixel frames gives 3 latent frames and each later block of 12 gives 3.

Output: the wrapper's normalised latents `(mu - mean) * (1 / std)` (the generator's space; mu is
the FIRST half of conv1's 2*z channels, log_var the second and unused), `[B, F, z, h, w]`.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn as nn

from .files import ModelFileError, read_state_dict
from .vae import DECODER_PREFIXES, ENCODER_PREFIXES, VAEConfig, WanVAEDecoder, WanVAEHalf
from .vae_blocks import AttentionBlock, CausalConv3d, FeatureCache, ResidualBlock, RMSNorm, run_stages

log = logging.getLogger("sfbridge.model.vae_encoder")

T_DOWN = 4  # pixel frames per latent frame after the first


class Downsample(nn.Module):
    """Zero-pad right/bottom + 3x3 stride-2 conv; `downsample3d` then halves time with a causal conv.

    The time conv sees [last frame of the previous call, this call's frames] with stride 2 and no
    padding, so 2k new frames give k outputs. At stream start frame 0 skips it and passes alone.
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        assert mode in ("downsample2d", "downsample3d"), f"encoder-only Downsample, got mode {mode}"
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
        self.time_conv = (
            CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0)) if mode == "downsample3d" else None
        )
        self.slot = -1  # cache slot of the time conv's one-frame memory

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        B, C, T, H, W = x.shape
        x = self.resample(x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W))
        x = x.reshape(B, T, C, *x.shape[-2:]).permute(0, 2, 1, 3, 4)  # [B, C, T, H/2, W/2]
        if self.time_conv is None:
            return x
        last = x[:, :, -1:]
        prev = cache.get(self.slot)
        head = x[:, :, :0]
        if prev is None:  # stream start: frame 0 passes through and is the first memory
            head, x, prev = x[:, :, :1], x[:, :, 1:], x[:, :, :1]
        if x.shape[2] > 0:
            assert x.shape[2] % 2 == 0, f"downsample3d needs an even frame count after the first, got {x.shape[2]}"
            x = self.time_conv(torch.cat([prev.to(x.dtype), x], dim=2))  # [B, C, t/2, H/2, W/2]
        cache.put(self.slot, last, keep=1)
        return torch.cat([head, x], dim=2)


class Encoder3d(nn.Module):
    """Wan2.1 `Encoder3d`: conv1, downsample levels, middle (res, attn, res), head -> 2z channels."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * u for u in (1, *cfg.dim_mult)]  # 96: [96, 96, 192, 384, 384]
        scale = 1.0
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        downs: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(cfg.num_res_blocks):
                downs.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                if scale in cfg.attn_scales:
                    downs.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                downs.append(Downsample(out_dim, "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.downsamples = nn.Sequential(*downs)
        c = dims[-1]
        self.middle = nn.Sequential(
            ResidualBlock(c, c, cfg.dropout), AttentionBlock(c), ResidualBlock(c, c, cfg.dropout)
        )
        self.head = nn.Sequential(RMSNorm(c, images=False), nn.SiLU(), CausalConv3d(c, cfg.z_dim * 2, 3, padding=1))
        # one cache slot per stateful layer; the cache is a dict, so only uniqueness matters
        stateful = [m for m in self.modules() if isinstance(m, CausalConv3d) and m.time_pad > 0]
        stateful += [m for m in self.modules() if isinstance(m, Downsample) and m.time_conv is not None]
        for slot, m in enumerate(stateful):
            m.slot = slot
        self.num_cache_slots = len(stateful)

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        return run_stages(x, cache, self.conv1, [*self.downsamples, *self.middle], self.head)


class WanVAEEncoder(WanVAEHalf):
    """Encoder3d + conv1 (1x1x1, 2z -> 2z); keys `encoder.*`, `conv1.*` of Wan2.1_VAE.pth.

    `forward(pixels [B, T, 3, H, W] in [-1, 1], cache)` -> normalised latents [B, F, z, H/8, W/8].
    T must follow the stream's framing (1 + 4k at stream start, 4k after); StreamingVAEEncoder
    does that bookkeeping. Loading is strict except the decoder keys.
    """

    REQUIRED_KEYS = ("encoder.conv1.weight", "conv1.weight")
    NOT_THIS_FILE = "not a Wan2.1 VAE state dict with an encoder?"
    SKIP_PREFIXES = DECODER_PREFIXES

    def __init__(self, cfg: VAEConfig | None = None) -> None:
        super().__init__(cfg)
        self.encoder = Encoder3d(self.cfg)
        self.conv1 = CausalConv3d(self.cfg.z_dim * 2, self.cfg.z_dim * 2, 1)

    @property
    def num_cache_slots(self) -> int:
        return self.encoder.num_cache_slots

    def forward(self, pixels: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        B, T, C, H, W = pixels.shape
        assert C == 3 and H % 8 == 0 and W % 8 == 0, f"pixels must be [B, T, 3, 8h, 8w], got {tuple(pixels.shape)}"
        dtype = self.conv1.weight.dtype
        x = pixels.to(dtype).permute(0, 2, 1, 3, 4)  # [B, 3, T, H, W]
        mu = self.conv1(self.encoder(x, cache))[:, : self.cfg.z_dim]  # [B, z, F, h, w]; 2nd half: log_var
        # official: (mu - mean) * (1 / std), the reciprocal taken in the pixels' dtype
        z = (mu - self.mean.to(dtype)) * (1.0 / self.std.to(dtype))
        return z.permute(0, 2, 1, 3, 4)  # [B, F, z, h, w]

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, frames_per_call: int | None = T_DOWN) -> torch.Tensor:
        """One-shot encode of a whole clip: [B, 1 + 4k, 3, H, W] in [-1, 1] -> [B, 1 + k, z, H/8, W/8]."""
        T = pixels.shape[1]
        assert (T - 1) % T_DOWN == 0, f"a whole clip has 1 + 4k frames, got {T}"
        return StreamingVAEEncoder(self, frames_per_call).push(pixels)


def to_pixels(frames: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] frames -> float [-1, 1] on `device` (uint8 moves first: 4x fewer bytes)."""
    frames = frames.to(device, non_blocking=True)
    if frames.dtype == torch.uint8:
        return (frames.float() / 127.5 - 1.0).to(dtype)  # fp32 map, then the model's dtype
    return frames.to(dtype)


def uint8_hwc_to_frames(frames: torch.Tensor) -> torch.Tensor:
    """Engine frames uint8 [T, H, W, 3] or [B, T, H, W, 3] -> uint8 [B, T, 3, H, W] (what `push` takes)."""
    if frames.ndim == 4:
        frames = frames.unsqueeze(0)
    assert frames.ndim == 5 and frames.shape[-1] == 3, f"frames must be [B, T, H, W, 3], got {tuple(frames.shape)}"
    return frames.permute(0, 1, 4, 2, 3)


class StreamingVAEEncoder:
    """Exact block-by-block encode: `push` a block's pixel frames, get its latents.

        enc = StreamingVAEEncoder(encoder)
        for frames in blocks:               # [B, T, 3, H, W], uint8 or float in [-1, 1]
            latents = enc.push(frames)      # [B, F, 16, H/8, W/8] normalised (generator space)
        enc.reset()                         # new scene

    A scene's first frame makes one latent frame, then every 4 frames one more (9 -> 3, 12 -> 3).
    Frames that do not complete a group of 4 wait for the next push (F may be 0), so any chunking
    gives the same latents as one-shot `encode`. `frames_per_call`: pixel frames per encoder call
    after the first frame (a multiple of 4). 4 (default) is the official 1, 4, 4, ... loop: every
    group then goes through the same ops whatever the push sizes (bit-identical). None: all ready
    frames in one call (fewer kernel launches, differences of float rounding only).
    """

    def __init__(self, encoder: WanVAEEncoder, frames_per_call: int | None = T_DOWN) -> None:
        assert frames_per_call is None or frames_per_call % T_DOWN == 0, f"frames_per_call {frames_per_call}"
        self.encoder = encoder
        self.frames_per_call = frames_per_call
        self.cache = FeatureCache()
        self.pending: torch.Tensor | None = None  # [B, t < 4, 3, H, W] waiting for a full group
        self.frames_in = 0
        self.latents_out = 0

    def reset(self) -> None:
        self.cache.reset()
        self.pending = None
        self.frames_in = 0
        self.latents_out = 0

    @torch.no_grad()
    def push(self, frames: torch.Tensor) -> torch.Tensor:
        assert frames.ndim == 5 and frames.shape[2] == 3, f"frames must be [B, T, 3, H, W], got {tuple(frames.shape)}"
        w = self.encoder.conv1.weight
        x = to_pixels(frames, w.device, w.dtype)
        self.frames_in += x.shape[1]
        if self.pending is not None:
            x = torch.cat([self.pending, x], dim=1)
        start = self.latents_out == 0
        n = x.shape[1]
        ready = (1 + (n - 1) // T_DOWN * T_DOWN if n else 0) if start else n // T_DOWN * T_DOWN  # whole groups
        self.pending = x[:, ready:] if ready < x.shape[1] else None
        out, i = [], 0
        if start and ready and self.frames_per_call is not None:
            out.append(self.encoder(x[:, :1], self.cache))  # official: the first frame alone
            i = 1
        step = self.frames_per_call or ready
        while i < ready:
            out.append(self.encoder(x[:, i : i + step], self.cache))
            i += step
        if not out:
            B, _, _, H, W = x.shape
            return torch.zeros(B, 0, self.encoder.cfg.z_dim, H // 8, W // 8, device=w.device, dtype=w.dtype)
        latents = torch.cat(out, dim=1)
        self.latents_out += latents.shape[1]
        return latents


def load_wan_vae(
    path: str | os.PathLike,
    cfg: VAEConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    encoder: bool = True,
) -> tuple[WanVAEDecoder, WanVAEEncoder | None]:
    """Load `Wan2.1_VAE.pth` strictly: decoder (`conv2.*`, `decoder.*`) and encoder (`encoder.*`, `conv1.*`).

    Each half is strict on its own keys and skips only the other half's prefixes, so together every
    key of the file must be used and every module key present. `encoder=False`: decoder only (the
    encoder keys are skipped, as `WanVAEDecoder.from_file`).
    """
    sd = read_state_dict(path)
    source = str(path)
    if cfg is None:  # sized from the decoder's keys, as a decoder-only load does
        cfg = WanVAEDecoder.config_from_state_dict(sd, source)
    dec = WanVAEDecoder.from_state_dict(sd, cfg, device, dtype, source=source)
    if not encoder:
        return dec, None
    if not any(k.startswith(ENCODER_PREFIXES) for k in sd):
        raise ModelFileError(f"{source}: no encoder keys ({', '.join(ENCODER_PREFIXES)}); a decoder-only file?")
    return dec, WanVAEEncoder.from_state_dict(sd, cfg, device, dtype, source=source)
