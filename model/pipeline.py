"""Block-wise streaming rollout of Self Forcing: few-step denoising + context pass per block.

Mirrors ``pipeline/causal_inference.py:CausalInferencePipeline.inference`` for T2V, turned
into an endless stream: one call of :meth:`StreamPipeline.next_block` = one block of
``num_frame_per_block`` latent frames (4 denoising calls + 1 cache-update call by default).
Noise comes from a per-stream ``torch.Generator`` (CPU, float32, so a seed gives the same
stream on any device); tests and the golden tool can inject the exact draws instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from .causal_wan import CausalWanModel
from .config import StreamConfig
from .kv_cache import CrossAttnCache, KVCache
from .scheduler import FlowMatchScheduler, validate_steps

log = logging.getLogger(__name__)


class StreamPipeline:
    """Endless block generator. Call ``reset(seed)``, ``set_prompt_embeds(e)``, then ``next_block()``."""

    def __init__(self, model: CausalWanModel, cfg: StreamConfig, batch: int = 1, seed: int = 0) -> None:
        mcfg = model.cfg
        self.model, self.cfg, self.batch = model, cfg, batch
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.tokens_per_frame = cfg.tokens_per_frame(mcfg.patch_size)
        self.block_tokens = cfg.num_frame_per_block * self.tokens_per_frame
        self.scheduler = FlowMatchScheduler(cfg.timestep_shift)
        self.kv = KVCache(mcfg.num_layers, batch, cfg.cache_frames(), self.tokens_per_frame, mcfg.num_heads,
                          mcfg.head_dim, rolling=cfg.local_attn_size != -1, sink_frames=cfg.sink_size,
                          dtype=self.dtype, device=self.device)
        self.cross = CrossAttnCache(mcfg.num_layers, batch, mcfg.text_len, mcfg.num_heads, mcfg.head_dim,
                                    dtype=self.dtype, device=self.device)
        self.noise_gen = torch.Generator(device="cpu")
        self.prompt_embeds: torch.Tensor | None = None
        self.timesteps = torch.empty(0)
        self.set_steps(cfg.denoising_step_list, warp=cfg.warp_denoising_step)
        self.last_x0: list[torch.Tensor] = []  # x0 of every denoising step of the last block
        self.reset(seed)

    # -- stream control -------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """New scene: empty caches, block 0, RoPE positions from 0; reseed if a seed is given."""
        self.kv.reset()
        self.cross.reset()
        self.block_index = 0
        self.frame_base = 0  # absolute latent frame that has RoPE position 0 (rebasing)
        if seed is not None:
            self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Re-seed the noise stream; takes effect from the next draw (caches are kept)."""
        self.seed = int(seed)
        self.noise_gen.manual_seed(self.seed)

    def set_prompt_embeds(self, embeds: torch.Tensor) -> None:
        """Text context [B, Lt <= text_len, text_dim]; resets only the cross-attention cache."""
        mcfg = self.model.cfg
        assert embeds.ndim == 3 and embeds.shape[0] == self.batch and embeds.shape[2] == mcfg.text_dim, (
            f"prompt embeds {tuple(embeds.shape)} must be "
            f"[{self.batch}, <= {mcfg.text_len}, {mcfg.text_dim}]")
        self.prompt_embeds = embeds.to(device=self.device, dtype=self.dtype)
        self.cross.reset()

    def set_steps(self, steps: Sequence[float], warp: bool = True) -> None:
        """Denoising step list for the next blocks: raw config values (warped like the official
        code, e.g. [1000, 750, 500, 250] -> [1000, 937.5, 833.33, 625]) or timesteps if warp=False."""
        steps = validate_steps(steps, warp)
        self.timesteps = self.scheduler.warp(steps) if warp else torch.tensor(steps, dtype=torch.float32)

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.numel())

    # -- generation -----------------------------------------------------------------------
    def _draw(self) -> torch.Tensor:
        m, c = self.model.cfg, self.cfg
        shape = (self.batch, c.num_frame_per_block, m.in_dim, c.latent_h, c.latent_w)
        return torch.randn(shape, generator=self.noise_gen, dtype=torch.float32).to(self.device, self.dtype)

    def _maybe_rebase(self, start_frame: int) -> int:
        """RoPE frame position of the block; rotates cached keys back when it would grow too big."""
        c = self.cfg
        F = c.num_frame_per_block
        pos = start_frame - self.frame_base
        if c.rope_rebase_frames is not None and pos + F > c.rope_rebase_frames:
            delta = pos  # the new block starts at position 0; cached keys get negative positions
            for layer in range(self.kv.k.shape[0]):
                k, _ = self.kv.valid(layer)
                k.copy_(self.model.rope.rotate_frames(k, -delta))
            self.frame_base += delta
            pos = 0
            log.debug("rebased RoPE by %d frames at block %d", delta, self.block_index)
        if pos + F > c.max_rope_frames:
            raise RuntimeError(f"RoPE frame position {pos + F} exceeds max_rope_frames {c.max_rope_frames}; "
                               "set rope_rebase_frames")
        return pos

    @torch.no_grad()
    def next_block(self, noise: torch.Tensor | None = None,
                   renoise: torch.Tensor | None = None) -> torch.Tensor:
        """Generate the next block: latents [B, F, 16, h, w] (clean x0 of the last step).

        ``noise`` [B, F, C, h, w] replaces the initial draw; ``renoise`` [steps-1, B, F, C, h, w]
        replaces the draws used to re-noise x0 between steps. Without them both come from the
        stream's generator (initial noise first, then one draw per re-noise, in order).
        """
        assert self.prompt_embeds is not None or self.cross.is_init, "call set_prompt_embeds() first"
        c = self.cfg
        F, B = c.num_frame_per_block, self.batch
        start_frame = self.block_index * F
        current_start = start_frame * self.tokens_per_frame
        rope_pos = self._maybe_rebase(start_frame)
        x = self._draw() if noise is None else noise.to(self.device, self.dtype)
        assert x.shape == (B, F, self.model.cfg.in_dim, c.latent_h, c.latent_w), f"noise {tuple(x.shape)}"
        steps = self.timesteps
        self.last_x0 = []
        x0 = x
        for i in range(len(steps)):
            t = torch.full((B, F), float(steps[i]), dtype=torch.float32, device=self.device)
            flow = self.model(x, t, self.prompt_embeds, self.kv, self.cross, current_start, rope_pos)
            x0 = self.scheduler.flow_to_x0(flow, x, t)
            self.last_x0.append(x0)
            if i + 1 < len(steps):
                eps = self._draw() if renoise is None else renoise[i].to(self.device, self.dtype)
                t_next = torch.full((B, F), float(steps[i + 1]), dtype=torch.float32, device=self.device)
                x = self.scheduler.add_noise(x0, eps, t_next)
        # context pass: clean block at t = context_noise overwrites this block's K/V
        t_ctx = torch.full((B, F), float(c.context_noise), dtype=torch.float32, device=self.device)
        self.model(x0, t_ctx, self.prompt_embeds, self.kv, self.cross, current_start, rope_pos)
        self.block_index += 1
        return x0
