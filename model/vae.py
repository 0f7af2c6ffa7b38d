"""Wan2.1 VAE decoder with an exact streaming feature cache.

Mirrors `wan/modules/vae.py` (`Decoder3d`, `WanVAE_.decode/cached_decode`) and the latent
de-normalisation of `utils/wan_wrapper.py:WanVAEWrapper.decode_to_pixel` (Self-Forcing commit
33593df). The building blocks (`CausalConv3d`, `RMS_norm`, `Resample`, `ResidualBlock`,
`AttentionBlock`, `FeatureCache`) are in vae_blocks.py and re-exported here.

This file holds the decoder half and the config and loader both halves share; the streaming
encoder (`encoder.*`, `conv1.*`) is in vae_encoder.py, which also loads the whole file strictly
(`load_wan_vae`). `WanVAEDecoder.from_file` alone drops the encoder keys (`ENCODER_PREFIXES`) for
decoder-only use (text-to-video) and is strict on everything else (`conv2.*`, `decoder.*`).

Streaming: the official decoder walks latent frames one at a time and carries, for every
causal 3D conv, the last 2 frames of that conv's input (`feat_cache`, 32 entries for the real
VAE). Here that state is a `FeatureCache` object and each `CausalConv3d.forward(x, cache)`
prepends what it saw last. Because the state is exact, decoding block by block equals decoding
everything at once (golden: max |diff| 0.0 in the official code). A whole block is processed
per call (not frame by frame) which is the same math, fewer kernel launches.

Frame counts: the first latent frame of a stream gives 1 pixel frame (the temporal upsamplers
skip their time conv on it), every later latent frame gives 4.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import torch
import torch.nn as nn

from .files import ModelFileError, load_strict, read_state_dict
from .vae_blocks import (
    CACHE_T,
    AttentionBlock,
    CausalConv3d,
    FeatureCache,
    Resample,
    ResidualBlock,
    RMSNorm,
    run_stages,
)

# The blocks are re-exported: callers import them from here (sfbridge.model.vae) as before the split.
__all__ = [
    "CACHE_T",
    "DECODER_PREFIXES",
    "ENCODER_PREFIXES",
    "IGNORED_PREFIXES",
    "LATENT_MEAN",
    "LATENT_STD",
    "AttentionBlock",
    "CausalConv3d",
    "Decoder3d",
    "FeatureCache",
    "RMSNorm",
    "Resample",
    "ResidualBlock",
    "StreamingVAEDecoder",
    "VAEConfig",
    "WanVAEDecoder",
    "WanVAEHalf",
    "run_stages",
    "to_uint8_rgb",
]

log = logging.getLogger("sfbridge.model.vae")

# Per-channel latent statistics of the Wan2.1 VAE (utils/wan_wrapper.py). The generator works in
# the normalised space z_n = (z - mean) / std; decode maps back with z = z_n * std + mean.
# fmt: off
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
# fmt: on

# Keys of Wan2.1_VAE.pth per half: a decoder-only load drops the encoder's and vice versa.
ENCODER_PREFIXES = ("encoder.", "conv1.")
DECODER_PREFIXES = ("decoder.", "conv2.")
IGNORED_PREFIXES = ENCODER_PREFIXES  # what WanVAEDecoder.from_file skips (kept name: older callers)


@dataclass
class VAEConfig:
    """`_video_vae` arguments (wan/modules/vae.py); defaults are the real Wan2.1 VAE."""

    dim: int = 96  # base width; decoder widths are dim * [4, 4, 4, 2, 1]
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()  # Wan2.1: attention only in the middle block
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # encoder flags; decoder reverses them
    dropout: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> VAEConfig:
        """From a metadata.json `vae_config` (extra keys such as decode_chunk_latent_frames ignored)."""
        return cls(
            dim=d["dim"],
            z_dim=d["z_dim"],
            dim_mult=tuple(d["dim_mult"]),
            num_res_blocks=d["num_res_blocks"],
            attn_scales=tuple(d["attn_scales"]),
            temperal_downsample=tuple(d["temperal_downsample"]),
            dropout=d.get("dropout", 0.0),
        )

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> VAEConfig:
        """Widths and residual blocks per stage from the tensors (decoder keys, else encoder keys);
        dim_mult and the temporal flags are Wan2.1's."""
        levels = len(cls.dim_mult)
        if "decoder.head.2.weight" in sd:
            dim = sd["decoder.head.2.weight"].shape[1]  # [3, dim, 3, 3, 3]
            z_dim = sd["conv2.weight"].shape[0]  # [z, z, 1, 1, 1]
            n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("decoder.upsamples."))
            res = (n - (levels - 1)) // levels - 1  # levels x (res + 1) blocks + (levels - 1) resamples
        else:
            dim = sd["encoder.conv1.weight"].shape[0]  # [dim, 3, 3, 3, 3]
            z_dim = sd["conv1.weight"].shape[0] // 2  # [2z, 2z, 1, 1, 1]: mu and log_var
            n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.downsamples."))
            res = (n - (levels - 1)) // levels  # levels x res blocks + (levels - 1) resamples
        return cls(dim=dim, z_dim=z_dim, num_res_blocks=res)


class Decoder3d(nn.Module):
    """Wan2.1 `Decoder3d`: conv1, middle (res, attn, res), upsample levels, head -> RGB in ~[-1, 1]."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * u for u in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]  # 96: [384,384,384,192,96]
        temperal_upsample = cfg.temperal_downsample[::-1]
        scale = 1.0 / 2 ** (len(cfg.dim_mult) - 2)
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(
            ResidualBlock(dims[0], dims[0], cfg.dropout),
            AttentionBlock(dims[0]),
            ResidualBlock(dims[0], dims[0], cfg.dropout),
        )
        ups: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            if i > 0:
                in_dim = in_dim // 2  # the previous Resample halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                ups.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                if scale in cfg.attn_scales:
                    ups.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                ups.append(Resample(out_dim, "upsample3d" if temperal_upsample[i] else "upsample2d"))
                scale *= 2.0
        self.upsamples = nn.Sequential(*ups)
        self.head = nn.Sequential(RMSNorm(dims[-1], images=False), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))
        # cache slots in call order (the 1x1x1 shortcuts need none): 32 for Wan2.1
        cached = [m for m in self.modules() if isinstance(m, CausalConv3d) and m.time_pad > 0]
        order = [m for m in self._call_order() if m in cached]
        assert len(order) == len(cached), f"call order covers {len(order)} of {len(cached)} causal convs"
        for slot, m in enumerate(order):
            m.slot = slot
        self.num_cache_slots = len(order)

    def _call_order(self) -> list[nn.Module]:
        """Causal convs in the order forward() calls them (residual convs before a block's next one)."""
        out = [self.conv1]
        for blk in [*self.middle, *self.upsamples]:
            if isinstance(blk, ResidualBlock):
                out += [m for m in blk.residual if isinstance(m, CausalConv3d)]
            elif isinstance(blk, Resample) and blk.time_conv is not None:
                out.append(blk.time_conv)
        return out + [self.head[2]]

    def forward(self, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
        return run_stages(x, cache, self.conv1, [*self.middle, *self.upsamples], self.head)


_Half = TypeVar("_Half", bound="WanVAEHalf")


class WanVAEHalf(nn.Module):
    """What the decoder and encoder halves of one `Wan2.1_VAE.pth` share: the config, the wrapper's
    latent statistics, and strict loading (own keys strict, only the other half's prefixes skipped).

    Subclasses name the keys their config is sized from (`REQUIRED_KEYS`, with `NOT_THIS_FILE` as
    the hint of the missing-key error) and what they skip (`SKIP_PREFIXES`).
    """

    REQUIRED_KEYS: ClassVar[tuple[str, ...]]
    NOT_THIS_FILE: ClassVar[str]
    SKIP_PREFIXES: ClassVar[tuple[str, ...]]

    def __init__(self, cfg: VAEConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or VAEConfig()
        # not in the checkpoint: the wrapper's constants (persistent=False keeps them out of state_dict)
        assert self.cfg.z_dim == len(LATENT_MEAN), f"normalisation constants are for z_dim 16, got {self.cfg.z_dim}"
        self.register_buffer("mean", torch.tensor(LATENT_MEAN).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(LATENT_STD).view(1, -1, 1, 1, 1), persistent=False)

    @classmethod
    def config_from_state_dict(cls, sd: dict[str, torch.Tensor], source: str = "<state dict>") -> VAEConfig:
        """VAEConfig from the tensors, after checking this half's keys are there (error names file and key)."""
        for k in cls.REQUIRED_KEYS:
            if k not in sd:
                raise ModelFileError(f"{source}: missing key {k!r} ({cls.NOT_THIS_FILE})")
        return VAEConfig.from_state_dict(sd)

    @classmethod
    def from_file(
        cls: type[_Half],
        path: str | os.PathLike,
        cfg: VAEConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> _Half:
        """Load this half of `Wan2.1_VAE.pth` (or a .safetensors with the same keys)."""
        return cls.from_state_dict(read_state_dict(path), cfg, device, dtype, source=str(path))

    @classmethod
    def from_state_dict(
        cls: type[_Half],
        sd: dict[str, torch.Tensor],
        cfg: VAEConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        source: str = "<state dict>",
    ) -> _Half:
        if cfg is None:
            cfg = cls.config_from_state_dict(sd, source)
        model = cls(cfg)
        load_strict(model, sd, source, ignore_prefixes=cls.SKIP_PREFIXES)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


class WanVAEDecoder(WanVAEHalf):
    """conv2 (1x1x1 latent conv) + Decoder3d; keys `conv2.*`, `decoder.*` of Wan2.1_VAE.pth.

    `forward(latents [B, F, z, h, w] normalised, cache)` -> pixels [B, T, 3, 8h, 8w] clamped to
    [-1, 1], T = 4F (or 4F - 3 for the first block of a stream). Loading is strict except the
    encoder keys.
    """

    REQUIRED_KEYS = ("decoder.head.2.weight", "conv2.weight")
    NOT_THIS_FILE = "not a Wan2.1 VAE state dict?"
    SKIP_PREFIXES = IGNORED_PREFIXES

    def __init__(self, cfg: VAEConfig | None = None) -> None:
        super().__init__(cfg)
        self.conv2 = CausalConv3d(self.cfg.z_dim, self.cfg.z_dim, 1)
        self.decoder = Decoder3d(self.cfg)

    @property
    def num_cache_slots(self) -> int:
        return self.decoder.num_cache_slots

    def forward(self, latents: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
        B, F_, C, h, w = latents.shape
        assert C == self.cfg.z_dim, f"latents must be [B, F, {self.cfg.z_dim}, h, w], got {tuple(latents.shape)}"
        z = latents.to(self.conv2.weight.dtype).permute(0, 2, 1, 3, 4)  # [B, z, F, h, w]
        # official: z / (1/std) + mean, i.e. z * std + mean (differs from this in the last bit only)
        z = z * self.std.to(z.dtype) + self.mean.to(z.dtype)
        x = self.decoder(self.conv2(z), cache)  # [B, 3, T, 8h, 8w]
        return x.clamp(-1, 1).permute(0, 2, 1, 3, 4)  # [B, T, 3, H, W]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, latent_frames_per_call: int | None = 1) -> torch.Tensor:
        """One-shot decode of a whole clip: [B, F, z, h, w] -> [B, 1 + 4(F-1), 3, 8h, 8w] in [-1, 1]."""
        return StreamingVAEDecoder(self, latent_frames_per_call).push(latents)


class StreamingVAEDecoder:
    """Exact block-by-block decode: `push` each block's latents, get its pixels.

        dec = StreamingVAEDecoder(vae)
        for latents in blocks:              # [B, F, 16, h, w], generator (normalised) space
            pixels = dec.push(latents)      # [B, 4F (first block 4F-3), 3, 8h, 8w] in [-1, 1]
        dec.reset()                         # new video

    `latent_frames_per_call`: latent frames per decoder call. 1 (default) is the official loop:
    every latent frame then goes through the same ops whatever the block size, so any chunking
    is bit-identical to a one-shot decode, and peak memory at 480x832 stays low. None (whole
    block per call) launches fewer kernels; results then differ from 1 by float rounding (~1e-5).
    """

    def __init__(self, vae: WanVAEDecoder, latent_frames_per_call: int | None = 1) -> None:
        self.vae = vae
        self.latent_frames_per_call = latent_frames_per_call
        self.cache = FeatureCache()
        self.frames_in = 0

    def reset(self) -> None:
        self.cache.reset()
        self.frames_in = 0

    @torch.no_grad()
    def push(self, latents: torch.Tensor) -> torch.Tensor:
        assert latents.ndim == 5, f"latents must be [B, F, C, h, w], got {tuple(latents.shape)}"
        step = self.latent_frames_per_call or latents.shape[1]
        out = [self.vae(latents[:, i : i + step], self.cache) for i in range(0, latents.shape[1], step)]
        self.frames_in += latents.shape[1]
        return torch.cat(out, dim=1)


def to_uint8_rgb(pixels: torch.Tensor) -> torch.Tensor:
    """[B, T, 3, H, W] or [T, 3, H, W] in [-1, 1] -> uint8 [B*T, H, W, 3].

    Mapping as the pipeline: clamp to [-1, 1], then x * 0.5 + 0.5 to [0, 1]; to uint8 by
    ROUNDING (x * 255).round(). demo.py truncates (`clamp * 127.5 + 127.5` then `.byte()`),
    which is biased by half a level; the two differ by at most 1.
    """
    if pixels.ndim == 5:
        pixels = pixels.flatten(0, 1)
    assert pixels.ndim == 4 and pixels.shape[1] == 3, f"pixels must be [..., T, 3, H, W], got {tuple(pixels.shape)}"
    x = (pixels.float().clamp(-1, 1) * 0.5 + 0.5) * 255.0
    return x.round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
