"""``tiny``: the real Self Forcing architecture with a small config and seeded random weights.

Mirrors the streaming loop of the official ``demo.py`` (per block: few-step denoising, cache
update, output) on CPU in tens of milliseconds, so the daemon, the clients and the tests
exercise the real model code (causal DiT, rolling KV cache, scheduler, steering) without a GPU
or a download. Its pictures are noise-like: the weights are random.

Two stand-ins until the next issues land, both documented as such:
- text: a deterministic embedding of the prompt's UTF-8 bytes (seeded per-byte and
  per-position tables, zero rows after the last byte like UMT5 padding). It is only meaningful
  for this random model; the real model uses the UMT5 encoder.
- pixels: a fixed linear latent->RGB preview projection (16x3 matrix modelled on the widely
  used Wan2.1 latent preview factors), nearest-upsampled 8x; every latent frame is repeated 4
  times (the first latent frame of a scene once), which gives the causal VAE's 9/12 frames.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from sfbridge.generators.base import NATIVE_FPS, Block, Generator, GeneratorError, Steering
from sfbridge.model.config import ModelConfig, StreamConfig
from sfbridge.model.pipeline import StreamPipeline
from sfbridge.model.weights import random_model

log = logging.getLogger(__name__)

TINY_CONFIG = ModelConfig(dim=64, num_heads=2, num_layers=2, ffn_dim=128, text_dim=32, text_len=32)
TEXT_SEED = 0x5F0B  # fixed: the same prompt always gives the same embedding
WEIGHT_SEED = 20250611

# latent channel -> (R, G, B) in [-1, 1]; approximate Wan2.1 preview factors, preview only
PREVIEW_RGB = torch.tensor([
    [-0.1299, -0.1692, 0.2932], [0.0671, 0.0406, 0.0442], [0.3568, 0.2548, 0.1747],
    [0.0372, 0.2344, 0.1420], [0.0313, 0.0189, -0.0328], [0.0296, -0.0956, -0.0665],
    [-0.3477, -0.4059, -0.2925], [0.0166, 0.1902, 0.1975], [-0.0412, 0.0267, -0.1364],
    [-0.1293, 0.0740, 0.1636], [0.0680, 0.3019, 0.1128], [0.0032, 0.0581, 0.0639],
    [-0.1251, 0.0927, 0.1699], [0.0060, -0.0633, 0.0005], [0.3477, 0.2275, 0.2950],
    [0.1984, 0.0913, 0.1861],
])
PREVIEW_BIAS = torch.tensor([-0.1835, -0.0868, -0.3360])


def text_embedding(prompt: str, text_len: int, text_dim: int) -> torch.Tensor:
    """Stand-in text encoder for the random tiny model: [1, text_len, text_dim], zero padded."""
    g = torch.Generator().manual_seed(TEXT_SEED)
    byte_table = torch.randn(257, text_dim, generator=g)  # 256 byte values + end-of-text
    pos_table = 0.5 * torch.randn(text_len, text_dim, generator=g)
    ids = list(prompt.encode("utf-8"))[: text_len - 1] + [256]
    out = torch.zeros(1, text_len, text_dim)
    out[0, : len(ids)] = byte_table[ids] + pos_table[: len(ids)]
    return out


def latents_to_rgb(latents: torch.Tensor) -> torch.Tensor:
    """[F, 16, h, w] latents -> [F, h, w, 3] uint8 through the fixed preview projection."""
    rgb = torch.einsum("fchw,cr->fhwr", latents.float(), PREVIEW_RGB) + PREVIEW_BIAS
    return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class TinyGenerator(Generator):
    """Endless rolling-window stream of the tiny random model; see module docstring."""

    name = "tiny"

    def __init__(self, width: int = 160, height: int = 96, seed: int = 0, window: int = 9, sink: int = 0,
                 steps: tuple[float, ...] | list[float] | None = None, threads: int | None = None) -> None:
        if width % 16 or height % 16 or width <= 0 or height <= 0:
            raise GeneratorError(f"tiny: width/height must be positive multiples of 16, got {width}x{height}")
        self.width, self.height, self.fps = int(width), int(height), NATIVE_FPS
        try:
            self.cfg = StreamConfig(latent_h=height // 8, latent_w=width // 8, local_attn_size=int(window),
                                    sink_size=int(sink))
        except AssertionError as e:
            raise GeneratorError(f"tiny: bad window/sink: {e}") from e
        if threads:
            torch.set_num_threads(int(threads))
        self.model = random_model(TINY_CONFIG, seed=WEIGHT_SEED)
        self.pipe = StreamPipeline(self.model, self.cfg, seed=int(seed))
        self.default_steps = tuple(steps) if steps else self.cfg.denoising_step_list
        self._set_steps(self.default_steps)
        self._steps: tuple[float, ...] = self.default_steps
        self._text_key: tuple | None = None
        self._seed = int(seed)
        self._frame = 0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "latent": [self.cfg.latent_h, self.cfg.latent_w],
                "window_frames": self.cfg.local_attn_size, "sink_frames": self.cfg.sink_size,
                "steps": list(self._steps), "weights": "random (seeded)"}

    def supports_steps(self) -> bool:
        return True

    def _set_steps(self, steps: tuple[float, ...]) -> None:
        try:
            self.pipe.set_steps(steps)
        except ValueError as e:
            raise GeneratorError(f"tiny: {e}") from e
        self._steps = tuple(steps)

    def _embeds(self, prompt: str) -> torch.Tensor:
        return text_embedding(prompt, TINY_CONFIG.text_len, TINY_CONFIG.text_dim)

    def _apply(self, steering: Steering) -> float:
        """Bring prompt, seed and steps in line with ``steering`` for the next block."""
        steps = tuple(steering.denoising_steps) if steering.denoising_steps else self.default_steps
        if steps != self._steps:
            self._set_steps(steps)
        if steering.seed != self._seed:  # takes effect from this block's noise on
            self._seed = int(steering.seed)
            self.pipe.reseed(self._seed)
        alpha = steering.blend_alpha(self.pipe.block_index)
        key = (steering.prompt, steering.prev_prompt if alpha < 1.0 else None, alpha)
        if key != self._text_key:  # new conditioning: only the cross-attention cache is reset
            e = self._embeds(steering.prompt)
            if alpha < 1.0 and steering.prev_prompt is not None:
                e = alpha * e + (1.0 - alpha) * self._embeds(steering.prev_prompt)
            self.pipe.set_prompt_embeds(e)
            self._text_key = key
        return alpha

    def reset(self, steering: Steering) -> None:
        self._seed = int(steering.seed)
        self.pipe.reset(self._seed)
        self._text_key = None
        self._frame = 0

    def next_block(self, steering: Steering) -> Block:
        t0 = time.perf_counter()
        alpha = self._apply(steering)
        index = self.pipe.block_index
        latents = self.pipe.next_block()[0]  # [F, 16, h, w]
        t1 = time.perf_counter()
        rgb = latents_to_rgb(latents).numpy()  # [F, h, w, 3]
        repeats = np.full(len(rgb), 4)
        if index == 0:
            repeats[0] = 1  # causal VAE: the first latent frame of a scene is one pixel frame
        frames = np.repeat(rgb, repeats, axis=0)
        frames = np.ascontiguousarray(frames.repeat(8, axis=1).repeat(8, axis=2))  # [N, H, W, 3]
        block = Block(frames=frames, index=index, first_frame=self._frame, state_id=steering.state_id,
                      info={"model_ms": 1e3 * (t1 - t0), "total_ms": 1e3 * (time.perf_counter() - t0),
                            "blend_alpha": alpha, "steps": list(self._steps)})
        self._frame += len(frames)
        return block


def create(**options: Any) -> TinyGenerator:
    return TinyGenerator(**options)
