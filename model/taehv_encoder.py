"""TAEHV encoder (the `encoder.*` half of `taew2_1.pth`) with streaming state, and the strict loader.

Mirrors the encoder half of madebyollin/taehv `taehv.py` (`TAEHV.encoder`, `TPool`, `MemBlock`,
`StreamingTAEHV.encode`; MIT). Written from its published description; the module tree (and so
the keys `encoder.N.*`) is the same. Why: a cheap alternative to the Wan VAE encoder for
video-to-video (see docs/MODELS.md for FLOPs and timings).

Layout: 0 conv(3p^2 -> 64), 1 ReLU, then 3 levels of [TPool(64, s), conv(64, 64, stride 2, no
bias), 3 x MemBlock(64)] at 2-4 / 7-11 / 12-16, and 17 conv(64 -> latent). TPool merges `s`
consecutive frames with a 1x1 conv (s = 2, 2, 1 for taew2_1: 4 pixel frames per latent).

Latent space: the output is already the generator's normalised latent space. TAEHV's README:
it "does not use any latent scales / shifts (TAEHV encodes / decodes exactly what diffusion models
use)"; the TAEHV decoder that Self Forcing's demo runs takes the generator's latents as they are,
and Daydream Scope feeds this encoder's output to the same causal Wan DiT without mean/std. So
nothing is applied here (unlike the Wan VAE encoder's `(mu - mean) / std`). Pixels: TAEHV takes
[0, 1]; the streaming wrapper maps sfbridge's [-1, 1] (or uint8) to that.

Frame alignment: TAEHV's own `encode_video` groups frames 0-3, 4-7, ... and pads the END to a
multiple of 4. The generator's latent grid is the Wan VAE's: latent 0 from frame 0 alone, latent
j from frames 4j-3..4j; the TAEHV decoder matches it by dropping its first 3 output frames. The
streaming encoder mirrors that trim: at a scene start it puts 3 copies of the first frame in
front, so 9 frames (-> 12) give 3 latents and every later 12 frames give 3, latent j covering the
same pixel frames as the Wan encoder's latent j. Temporal mixing is only MemBlock (its input one
frame back) and TPool (within a group of 4), so carrying one frame per MemBlock across calls makes
streaming equal one-shot encoding.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .files import read_state_dict
from .taehv import MemBlock, TAEHVDecoder, TAEHVHalf, conv, require_keys, run_with_memory

log = logging.getLogger("sfbridge.model.taehv_encoder")

TPOOL_INDICES = (2, 7, 12)  # positions of the TPool layers in the encoder Sequential
OUT_INDEX = 17  # the last conv (64 -> latent channels)
DECODER_PREFIXES = ("decoder.",)  # what an encoder-only load skips


class TPool(nn.Module):
    """`stride` consecutive frames stacked on channels, 1x1 conv back to C: [N*T, C] -> [N*T/stride, C]."""

    def __init__(self, n_f: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f * stride, n_f, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        NT, C, H, W = x.shape
        return self.conv(x.reshape(NT // self.stride, self.stride * C, H, W))  # frames t*s..t*s+s-1 -> t


@dataclass
class TAEHVEncoderConfig:
    """Encoder shape; defaults are taew2_1 (16 latent channels, 4x time, 8x space)."""

    latent_channels: int = 16
    patch_size: int = 1  # pixel-unshuffle factor of the input (2 for taew2_2 / taehv1_5)
    time_strides: tuple[int, int, int] = (2, 2, 1)  # TPool strides
    n_f: int = 64

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], source: str = "<state dict>") -> TAEHVEncoderConfig:
        """Widths and TPool strides from tensor shapes (encoder.0 in/out, encoder.17 out, TPool in/out)."""
        need = ["encoder.0.weight", f"encoder.{OUT_INDEX}.weight", *(f"encoder.{i}.conv.weight" for i in TPOOL_INDICES)]
        require_keys(sd, need, source, "not a TAEHV state dict with an encoder?")
        first = sd["encoder.0.weight"]  # [n_f, 3 p^2, 3, 3]
        pools = [sd[f"encoder.{i}.conv.weight"] for i in TPOOL_INDICES]  # [n_f, n_f * s, 1, 1]
        return cls(
            latent_channels=sd[f"encoder.{OUT_INDEX}.weight"].shape[0],
            patch_size=math.isqrt(first.shape[1] // 3),
            time_strides=tuple(w.shape[1] // w.shape[0] for w in pools),
            n_f=first.shape[0],
        )


class TAEHVEncoder(TAEHVHalf):
    """Stateless encoder: `encoder` Sequential with the published layer order (keys `encoder.N.*`).

    `from_file` / `from_state_dict`: the encoder half of `taew2_1.pth`, strict, decoder keys skipped.
    """

    CONFIG = TAEHVEncoderConfig
    SKIP_PREFIXES = DECODER_PREFIXES

    def __init__(self, cfg: TAEHVEncoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or TAEHVEncoderConfig()
        c = cfg.n_f
        layers: list[nn.Module] = [conv(3 * cfg.patch_size**2, c), nn.ReLU(inplace=True)]
        for s in cfg.time_strides:
            layers += [TPool(c, s), conv(c, c, stride=2, bias=False), MemBlock(c, c), MemBlock(c, c), MemBlock(c, c)]
        layers.append(conv(c, cfg.latent_channels))
        self.encoder = nn.Sequential(*layers)
        self.t_downscale = math.prod(cfg.time_strides)  # pixel frames per latent frame: 4
        self.frames_to_pad = self.t_downscale - 1  # copies of a scene's first frame put in front: 3

    def forward(self, frames: torch.Tensor, memory: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """[N, T, 3, H, W] in [0, 1], T a multiple of t_downscale -> [N, T / t_downscale, C, H/8, W/8].

        `memory` (mutated): MemBlock index -> its last input frame [N, 1, C, h, w] from the previous
        call; missing entries mean stream start (zeros). None: a one-shot encode.
        """
        N, T, C, H, W = frames.shape
        assert C == 3 and T % self.t_downscale == 0, (
            f"frames must be [N, k * {self.t_downscale}, 3, H, W], got {tuple(frames.shape)}"
        )
        memory = {} if memory is None else memory
        x = frames.to(self.encoder[0].weight.dtype).reshape(N * T, C, H, W)
        if self.cfg.patch_size > 1:
            x = F.pixel_unshuffle(x, self.cfg.patch_size)
        x = run_with_memory(self.encoder, x, N, memory)
        return x.reshape(N, -1, *x.shape[1:])

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """One-shot: [N, 1 + 4k, 3, H, W] in [-1, 1] (or uint8) -> [N, 1 + k, C, H/8, W/8] (Wan framing)."""
        T = frames.shape[1]
        assert (T - 1) % self.t_downscale == 0, f"a whole clip has 1 + {self.t_downscale}k frames, got {T}"
        return StreamingTAEHVEncoder(self).push(frames)


class StreamingTAEHVEncoder:
    """Block-by-block TAEHV encode with the MemBlock state carried across calls.

        enc = StreamingTAEHVEncoder(encoder)
        for frames in blocks:               # [N, T, 3, H, W], uint8 or float in [-1, 1]
            latents = enc.push(frames)      # [N, F, 16, H/8, W/8], generator (normalised) space
        enc.reset()                         # new scene

    Same framing as the Wan VAE encoder: 9 frames -> 3 latents at a scene start (3 copies of the
    first frame go in front), then 12 -> 3. Frames short of a group of 4 wait for the next push.
    """

    def __init__(self, encoder: TAEHVEncoder) -> None:
        self.encoder = encoder
        self.memory: dict[int, torch.Tensor] = {}
        self.pending: torch.Tensor | None = None
        self.frames_in = 0

    def reset(self) -> None:
        self.memory = {}
        self.pending = None
        self.frames_in = 0

    @torch.no_grad()
    def push(self, frames: torch.Tensor) -> torch.Tensor:
        assert frames.ndim == 5 and frames.shape[2] == 3, f"frames must be [N, T, 3, H, W], got {tuple(frames.shape)}"
        w = self.encoder.encoder[0].weight
        x = frames.to(w.device, non_blocking=True)
        x = x.to(w.dtype) / 255.0 if x.dtype == torch.uint8 else (x.to(w.dtype) + 1.0) * 0.5  # -> [0, 1]
        if self.frames_in == 0 and x.shape[1] > 0:  # scene start: align to the Wan latent grid
            x = torch.cat([x[:, :1].expand(-1, self.encoder.frames_to_pad, -1, -1, -1), x], dim=1)
        self.frames_in += frames.shape[1]
        if self.pending is not None:
            x = torch.cat([self.pending, x], dim=1)
        ready = x.shape[1] // self.encoder.t_downscale * self.encoder.t_downscale
        self.pending = x[:, ready:] if ready < x.shape[1] else None
        if ready == 0:
            N, _, _, H, W = x.shape
            return torch.zeros(N, 0, self.encoder.cfg.latent_channels, H // 8, W // 8, device=w.device, dtype=w.dtype)
        return self.encoder(x[:, :ready], self.memory)


def load_taehv(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float16,
    encoder: bool = True,
) -> tuple[TAEHVDecoder, TAEHVEncoder | None]:
    """Load `taew2_1.pth` strictly: decoder (`decoder.*`) and encoder (`encoder.*`).

    Each half is strict on its own keys and skips only the other's prefix, so together every key of
    the file must be used. `encoder=False`: decoder only (as `TAEHVDecoder.from_file`).
    """
    sd = read_state_dict(path)
    dec = TAEHVDecoder.from_state_dict(sd, device, dtype, source=str(path))
    if not encoder:
        return dec, None
    return dec, TAEHVEncoder.from_state_dict(sd, device, dtype, source=str(path))
