"""``tiny``: the real Self Forcing architecture with a small config and seeded random weights.

Mirrors the streaming loop of the official ``demo.py`` (per block: few-step denoising, cache
update, output) on CPU in tens of milliseconds, so the daemon, the clients and the tests
exercise the real model code (causal DiT, rolling KV cache, scheduler, steering) without a GPU
or a download. Its pictures are noise-like: the weights are random.

Pixels go through the real streaming Wan VAE decoder code with a seeded random, deliberately
small config (``TINY_VAE``: base width 2, one residual block per stage, ~150 ms per block at
160x96 on 2 loaded CPU cores), so the CPU stream exercises DiT -> streaming VAE -> uint8 like
``self-forcing``. ``decoder="preview"`` keeps the old, ~10x cheaper stand-in: a fixed linear
latent->RGB projection (16x3 matrix modelled on the Wan2.1 latent preview factors),
nearest-upsampled 8x, every latent frame repeated 4 times (the first of a scene once).

Text is a stand-in: a deterministic embedding of the prompt's UTF-8 bytes (seeded per-byte and
per-position tables, zero rows after the last byte like UMT5 padding), only meaningful for this
random model; ``self-forcing`` uses the UMT5 encoder.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from sfbridge.generators.base import GeneratorError
from sfbridge.generators.streaming import FrameDecoder, StreamingGenerator, VAEFrames
from sfbridge.generators.v2v import InputEncoder
from sfbridge.model.attention import AttentionBackendError, explain_backend
from sfbridge.model.config import ModelConfig, StreamConfig
from sfbridge.model.pipeline import StreamPipeline
from sfbridge.model.vae import VAEConfig, WanVAEDecoder
from sfbridge.model.vae_encoder import WanVAEEncoder
from sfbridge.model.weights import random_model

log = logging.getLogger(__name__)

TINY_CONFIG = ModelConfig(dim=64, num_heads=2, num_layers=2, ffn_dim=128, text_dim=32, text_len=32)
TEXT_SEED = 0x5F0B  # fixed: the same prompt always gives the same embedding
WEIGHT_SEED = 20250611
VAE_SEED = 20250612
TINY_VAE = VAEConfig(dim=2, num_res_blocks=1)  # same layers as Wan2.1's VAE, 1/48 of the width

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


def random_vae(cfg: VAEConfig = TINY_VAE, seed: int = VAE_SEED) -> WanVAEDecoder:
    """Seeded random Wan VAE decoder (torch default init; the RNG state outside is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = WanVAEDecoder(cfg)
    return vae.eval().requires_grad_(False)


def random_vae_encoder(cfg: VAEConfig = TINY_VAE, seed: int = VAE_SEED + 1) -> WanVAEEncoder:
    """Seeded random Wan VAE encoder for v2v on CPU; push [B, T, 3, H, W] frames via StreamingVAEEncoder."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = WanVAEEncoder(cfg)
    return enc.eval().requires_grad_(False)


class PreviewFrames(FrameDecoder):
    """Cheap stand-in decoder: fixed latent->RGB projection, 8x nearest upsampling, 4x frame repeat."""

    name = "preview"

    def __init__(self) -> None:
        self.first = True

    def push(self, latents: torch.Tensor) -> np.ndarray:
        rgb = latents_to_rgb(latents[0]).numpy()  # [F, h, w, 3]
        repeats = np.full(len(rgb), 4)
        if self.first:
            repeats[0] = 1  # causal VAE: the first latent frame of a scene is one pixel frame
            self.first = False
        frames = np.repeat(rgb, repeats, axis=0)
        return np.ascontiguousarray(frames.repeat(8, axis=1).repeat(8, axis=2))  # [N, H, W, 3]

    def reset(self) -> None:
        self.first = True


class TinyGenerator(StreamingGenerator):
    """Endless rolling-window stream of the tiny random model; see module docstring."""

    name = "tiny"

    def __init__(self, width: int = 160, height: int = 96, seed: int = 0, window: int = 9, sink: int = 0,
                 steps: tuple[float, ...] | list[float] | None = None, threads: int | None = None,
                 decoder: str = "vae", attn: str = "auto", compile: bool = False,
                 overlap: bool | str = "auto") -> None:
        if width % 16 or height % 16 or width <= 0 or height <= 0:
            raise GeneratorError(f"tiny: width/height must be positive multiples of 16, got {width}x{height}")
        if decoder not in ("vae", "preview"):
            raise GeneratorError(f"tiny: decoder must be 'vae' or 'preview', got {decoder!r}")
        try:
            cfg = StreamConfig(latent_h=height // 8, latent_w=width // 8, local_attn_size=int(window),
                               sink_size=int(sink))
        except AssertionError as e:
            raise GeneratorError(f"tiny: bad window/sink: {e}") from e
        if threads:
            torch.set_num_threads(int(threads))
        try:
            self.attn, self.attn_reason = explain_backend(attn, "cpu", torch.float32, TINY_CONFIG.head_dim)
        except (AttentionBackendError, ValueError) as e:
            raise GeneratorError(f"tiny: {e}") from e
        self.cfg = cfg
        self.model = random_model(TINY_CONFIG, seed=WEIGHT_SEED, attn_backend=self.attn)
        frames: FrameDecoder = VAEFrames(random_vae()) if decoder == "vae" else PreviewFrames()
        super().__init__(StreamPipeline(self.model, cfg, seed=int(seed), compile=compile), frames, width, height, seed,
                         steps,
                         overlap=overlap)
        if compile:  # every attended length compiles now, not during the first blocks of a stream
            log.info("torch.compile warm-up: %d blocks", self.pipe.warm_up())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "latent": [self.cfg.latent_h, self.cfg.latent_w],
                "window_frames": self.cfg.local_attn_size, "sink_frames": self.cfg.sink_size,
                "steps": list(self._steps), "weights": "random (seeded)", "decoder": self.decoder.name,
                "attn": self.attn, "attn_reason": self.attn_reason}

    def _embeds(self, prompt: str) -> torch.Tensor:
        return text_embedding(prompt, TINY_CONFIG.text_len, TINY_CONFIG.text_dim)

    def _make_input_encoder(self) -> InputEncoder:
        """v2v: the seeded random Wan VAE encoder (TINY_VAE), streaming (sfbridge/generators/v2v.py)."""
        from sfbridge.model.vae_encoder import StreamingVAEEncoder

        return InputEncoder(StreamingVAEEncoder(random_vae_encoder()))

    def step_down(self) -> str | None:
        """Repeated OOMs: a window one block (3 latent frames) shorter, down to the block plus the sink."""
        c = self.pipe.cfg
        window = c.local_attn_size - c.num_frame_per_block
        if window < c.num_frame_per_block + c.sink_size:
            return None
        self._shrink_window(window, c.sink_size)
        self.cfg = self.pipe.cfg
        return f"window {window}"


def create(**options: Any) -> TinyGenerator:
    return TinyGenerator(**options)
