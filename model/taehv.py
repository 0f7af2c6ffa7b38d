"""TAEHV decoder (tiny approximate Wan2.1 decoder, `taew2_1.pth`) with streaming state.

Mirrors the decoder half of madebyollin/taehv `taehv.py` (`TAEHV.decoder`, `MemBlock`, `TGrow`,
`Clamp`, `StreamingTAEHV`; MIT), as used by Self-Forcing's `demo_utils/taehv.py`. Written from
its published description; the module tree (and so the state-dict keys `decoder.N.*`) is the same.

Latent space: TAEHV "does not use any latent scales / shifts" (its README): it decodes exactly
the normalised latents the generator outputs, so no mean/std is applied here (unlike vae.py).

Temporal layout: each latent frame becomes `t_upscale` (4) frames through two stride-2 TGrow
layers; the first `frames_to_trim` = t_upscale - 1 = 3 frames of a stream are dropped so the
count matches the Wan VAE: first block of F latents -> 4F - 3 frames, later blocks -> 4F.
The only temporal mixing is MemBlock, which sees its own input one frame earlier (zeros at
stream start), so carrying that one frame per MemBlock across `push` calls makes block-by-block
decoding equal to one-shot decoding. (Self-Forcing's demo instead re-decodes the previous
block's last 3 latents and drops 12 frames; that is unnecessary with carried state.)

The encoder half of the same file (`encoder.*`) is in taehv_encoder.py (same latent space).
`TAEHVDecoder.from_file` alone skips the `encoder.*` keys (decoder-only use);
`taehv_encoder.load_taehv` loads the whole file strictly (encoder + decoder).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .files import ModelFileError, load_strict, read_state_dict

log = logging.getLogger("sfbridge.model.taehv")

IGNORED_PREFIXES = ("encoder.",)  # what a decoder-only load skips
TGROW_INDICES = (7, 13, 19)  # positions of the TGrow layers in the decoder Sequential


def conv(n_in: int, n_out: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


def require_keys(sd: dict[str, torch.Tensor], keys: Iterable[str], source: str, hint: str) -> None:
    """Fail early, naming the file and the key, before config sizing reads a tensor that is not there."""
    for k in keys:
        if k not in sd:
            raise ModelFileError(f"{source}: missing key {k!r} ({hint})")


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """Residual 3-conv block whose input is [x_t, x_{t-1}] (the block's own input one frame back)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            conv(n_in * 2, n_out), nn.ReLU(inplace=True), conv(n_out, n_out), nn.ReLU(inplace=True), conv(n_out, n_out)
        )
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TGrow(nn.Module):
    """1x1 conv to stride*C channels, read as `stride` consecutive frames of C channels."""

    def __init__(self, n_f: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f, n_f * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        NT, C, H, W = x.shape
        return self.conv(x).reshape(NT * self.stride, C, H, W)  # frame t -> frames t*s .. t*s+s-1


@dataclass
class TAEHVConfig:
    """Decoder shape; defaults are taew2_1 (Wan2.1: 16 latent channels, 4x time, 8x space)."""

    latent_channels: int = 16
    patch_size: int = 1  # pixel-shuffle factor of the output (2 for taew2_2 / taehv1_5)
    time_strides: tuple[int, int, int] = (1, 2, 2)  # TGrow strides (1 = no temporal upscale there)
    space_upscale: tuple[bool, bool, bool] = (True, True, True)
    n_f: tuple[int, int, int, int] = (256, 128, 64, 64)

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], source: str = "<state dict>") -> TAEHVConfig:
        """Channels and TGrow strides from tensor shapes (decoder.1 in, decoder.22 out, TGrow out/in)."""
        need = ["decoder.1.weight", "decoder.22.weight", *(f"decoder.{i}.conv.weight" for i in TGROW_INDICES)]
        require_keys(sd, need, source, "not a TAEHV state dict?")
        out_ch = sd["decoder.22.weight"].shape[0]
        n_f = (sd["decoder.1.weight"].shape[0], *(sd[f"decoder.{i}.conv.weight"].shape[1] for i in TGROW_INDICES[1:]))
        n_f = (*n_f, sd["decoder.22.weight"].shape[1])
        strides = tuple(
            sd[f"decoder.{i}.conv.weight"].shape[0] // sd[f"decoder.{i}.conv.weight"].shape[1] for i in TGROW_INDICES
        )
        return cls(
            latent_channels=sd["decoder.1.weight"].shape[1],
            patch_size=math.isqrt(out_ch // 3),
            time_strides=strides,
            n_f=n_f,
        )


def run_with_memory(layers: nn.Sequential, x: torch.Tensor, N: int, memory: dict[int, torch.Tensor]) -> torch.Tensor:
    """Apply `layers` to x [N*T, C, H, W]; each MemBlock gets its input one frame back as `past`.

    Shared by the decoder and the encoder (the only temporal mixing of both). `memory` (mutated):
    MemBlock index -> its last input frame [N, 1, C, H, W], read as the frame before this call's
    first (missing: stream start, zeros) and replaced by this call's last.
    """
    for i, layer in enumerate(layers):
        if isinstance(layer, MemBlock):
            xs = x.reshape(N, -1, *x.shape[1:])  # [N, T_i, C_i, H_i, W_i]
            prev = memory.get(i)
            prev = torch.zeros_like(xs[:, :1]) if prev is None else prev.to(xs.dtype)
            past = torch.cat([prev, xs[:, :-1]], dim=1).reshape(x.shape)  # input shifted one frame
            memory[i] = xs[:, -1:].clone()
            x = layer(x, past)
        else:
            x = layer(x)
    return x


_Half = TypeVar("_Half", bound="TAEHVHalf")


class TAEHVHalf(nn.Module):
    """Loading shared by the decoder and encoder halves of one `taew2_1.pth` (or its .safetensors).

    Each half sizes itself from its own keys (`CONFIG.from_state_dict`), is strict on them and skips
    only the other half's prefix (`SKIP_PREFIXES`), so loading both uses every key of the file.
    """

    CONFIG: ClassVar[type]  # the half's config class, with from_state_dict(sd, source)
    SKIP_PREFIXES: ClassVar[tuple[str, ...]]  # the other half's keys

    @classmethod
    def from_file(
        cls: type[_Half],
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float16,
    ) -> _Half:
        return cls.from_state_dict(read_state_dict(path), device, dtype, source=str(path))

    @classmethod
    def from_state_dict(
        cls: type[_Half],
        sd: dict[str, torch.Tensor],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float16,
        source: str = "<state dict>",
    ) -> _Half:
        model = cls(cls.CONFIG.from_state_dict(sd, source))
        load_strict(model, sd, source, ignore_prefixes=cls.SKIP_PREFIXES)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


class TAEHVDecoder(TAEHVHalf):
    """Stateless decoder: `decoder` Sequential with the published layer order (keys `decoder.N.*`).

    0 Clamp, 1 conv(latent->256), 2 ReLU,
    3-5 MemBlock(256), 6 Upsample, 7 TGrow(256, s0), 8 conv(256->128),
    9-11 MemBlock(128), 12 Upsample, 13 TGrow(128, s1), 14 conv(128->64),
    15-17 MemBlock(64), 18 Upsample, 19 TGrow(64, s2), 20 conv(64->64),
    21 ReLU, 22 conv(64 -> 3 * patch^2)

    `from_file` / `from_state_dict`: decoder strict, encoder keys ignored.
    """

    CONFIG = TAEHVConfig
    SKIP_PREFIXES = IGNORED_PREFIXES

    def __init__(self, cfg: TAEHVConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or TAEHVConfig()
        n_f, s, up = cfg.n_f, cfg.time_strides, cfg.space_upscale
        layers: list[nn.Module] = [Clamp(), conv(cfg.latent_channels, n_f[0]), nn.ReLU(inplace=True)]
        for lvl in range(3):
            c = n_f[lvl]
            layers += [MemBlock(c, c), MemBlock(c, c), MemBlock(c, c)]
            layers += [
                nn.Upsample(scale_factor=2 if up[lvl] else 1),
                TGrow(c, s[lvl]),
                conv(c, n_f[lvl + 1], bias=False),
            ]
        layers += [nn.ReLU(inplace=True), conv(n_f[3], 3 * cfg.patch_size**2)]
        self.decoder = nn.Sequential(*layers)
        self.t_upscale = math.prod(cfg.time_strides)  # pixel frames per latent frame: 4
        self.frames_to_trim = self.t_upscale - 1  # dropped at stream start: 3

    def forward(self, latents: torch.Tensor, memory: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """[N, T, C, h, w] latents -> [N, T * t_upscale, 3, H, W] raw frames (~[0, 1], untrimmed).

        `memory` (mutated): MemBlock index -> its last input frame [N, 1, C, H, W] from the
        previous call; missing entries mean stream start (zeros). None: a one-shot decode.
        """
        N, T, C, h, w = latents.shape
        assert C == self.cfg.latent_channels, (
            f"latents must be [N, T, {self.cfg.latent_channels}, h, w], got {tuple(latents.shape)}"
        )
        memory = {} if memory is None else memory
        x = latents.to(self.decoder[1].weight.dtype).reshape(N * T, C, h, w)
        x = run_with_memory(self.decoder, x, N, memory)
        if self.cfg.patch_size > 1:
            x = F.pixel_shuffle(x, self.cfg.patch_size)
        return x.reshape(N, -1, *x.shape[1:])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """One-shot: [N, T, C, h, w] -> [N, t_upscale*T - frames_to_trim, 3, H, W] in [0, 1]."""
        return StreamingTAEHV(self).push(latents)


class StreamingTAEHV:
    """Block-by-block TAEHV decode with the MemBlock state carried across calls.

    dec = StreamingTAEHV(taehv)
    for latents in blocks:            # [N, F, 16, h, w], normalised (generator) latents
        frames = dec.push(latents)    # [N, 4F (first block 4F-3), 3, 8h, 8w] in [0, 1]
    dec.reset()                       # new video
    """

    def __init__(self, taehv: TAEHVDecoder) -> None:
        self.taehv = taehv
        self.memory: dict[int, torch.Tensor] = {}
        self.frames_out = 0  # raw frames produced so far (trimmed ones included)

    def reset(self) -> None:
        self.memory = {}
        self.frames_out = 0

    @torch.no_grad()
    def push(self, latents: torch.Tensor) -> torch.Tensor:
        assert latents.ndim == 5, f"latents must be [N, T, C, h, w], got {tuple(latents.shape)}"
        x = self.taehv(latents, self.memory)
        trim = max(self.taehv.frames_to_trim - self.frames_out, 0)
        self.frames_out += x.shape[1]
        return x[:, trim:].clamp(0, 1)


def frames_to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """[N, T, 3, H, W] or [T, 3, H, W] in [0, 1] -> uint8 [N*T, H, W, 3] (x * 255, rounded)."""
    if frames.ndim == 5:
        frames = frames.flatten(0, 1)
    assert frames.ndim == 4 and frames.shape[1] == 3, f"frames must be [..., T, 3, H, W], got {tuple(frames.shape)}"
    return (frames.float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
