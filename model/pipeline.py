"""Block-wise streaming rollout of Self Forcing: few-step denoising + context pass per block.

Mirrors ``pipeline/causal_inference.py:CausalInferencePipeline.inference`` for T2V, turned
into an endless stream: one call of :meth:`StreamPipeline.next_block` = one block of
``num_frame_per_block`` latent frames (4 denoising calls + 1 cache-update call by default).

Nothing in a steady-state block waits for the device: timestep features are tables on the
device (made when the step list changes), sigmas are host floats, RoPE cos/sin come from a device
table, KV slots are cached device index tensors, noise is drawn one block ahead on the CPU and
copied ``non_blocking`` (:mod:`.noise`). On CUDA each block ends with a recorded event
(``ready_event``) that a consumer (decoder stream) can wait on instead of synchronizing.

KV re-cache (:meth:`StreamPipeline.recache`, docs/MODEL.md "KV re-cache"): every context pass also
stores its clean latents in a :class:`~.kv_cache.LatentRing`; on a prompt change with re-cache the
window's non-sink frames run the context pass again under the new text, rewriting their K/V in place.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .causal_wan import CausalWanModel
from .config import StreamConfig
from .kv_cache import CrossAttnCache, KVCache, LatentRing
from .noise import NoiseStream
from .rope import RopeTable
from .scheduler import FlowMatchScheduler, one_minus_f32, renoise, validate_steps, x0_from_flow

log = logging.getLogger(__name__)


@dataclass
class BlockPlan:
    """Where the block goes: first absolute latent frame, token offset, RoPE (cos, sin) of its tokens."""

    start_frame: int
    current_start: int
    rope: tuple[torch.Tensor, torch.Tensor]


class StreamPipeline:
    """Endless block generator. Call ``reset(seed)``, ``set_prompt_embeds(e)``, then ``next_block()``.

    ``compile=True`` compiles the model's embedding / layer / head (``compile_backend``, default
    inductor); it compiles once per attended length while the window fills, then never again.
    """

    def __init__(self, model: CausalWanModel, cfg: StreamConfig, batch: int = 1, seed: int = 0,
                 compile: bool = False, compile_backend: object = "inductor") -> None:
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
        ph, pw = mcfg.patch_size[1:]
        table = (cfg.rope_rebase_frames or cfg.max_rope_frames) + 1  # rebasing rotates by up to that many
        self.rope = RopeTable(mcfg.head_dim, cfg.latent_h // ph, cfg.latent_w // pw, min(table, 4096), self.device)
        self.latents = LatentRing(self.kv, batch, mcfg.in_dim, cfg.latent_h, cfg.latent_w, self.dtype, self.device)
        shape = (batch, cfg.num_frame_per_block, mcfg.in_dim, cfg.latent_h, cfg.latent_w)
        self.noise = NoiseStream(shape, self.device, self.dtype, seed)
        self.prompt_embeds: torch.Tensor | None = None
        self.timesteps = torch.empty(0)
        self.set_steps(cfg.denoising_step_list, warp=cfg.warp_denoising_step)
        self.last_x0: list[torch.Tensor] = []  # x0 of every denoising step of the last block
        self.ready_event: torch.cuda.Event | None = None  # CUDA: recorded after the last block's work
        if compile:
            self.enable_compile(compile_backend)
        self.reset(seed)

    def enable_compile(self, backend: object = "inductor", mode: str | None = None) -> None:
        """Compile the model (see :meth:`CausalWanModel.set_compile`); allows one compile per fill length."""
        fill_shapes = -(-self.kv.capacity_frames // self.cfg.num_frame_per_block) + 2
        dyn = torch._dynamo.config
        dyn.recompile_limit = max(dyn.recompile_limit, fill_shapes + 2)
        self.model.set_compile(True, backend, mode)

    def warm_up(self) -> int:
        """Run blocks until the window is full (every attended length seen: all compiles happen now), then
        reset to block 0 with the same seed and prompt. Returns the number of blocks run."""
        F, cap = self.cfg.num_frame_per_block, self.kv.capacity_frames
        blocks = -(-cap // F) if self.kv.rolling else cap // F
        embeds = self.prompt_embeds
        if embeds is None:
            self.set_prompt_embeds(torch.zeros(self.batch, 1, self.model.cfg.text_dim))
        for _ in range(blocks):
            self.next_block()
        self.prompt_embeds = embeds  # as before (the cross cache is refilled from it on the next block)
        self.reset(self.seed)
        return blocks

    # -- stream control -------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """New scene: empty caches, block 0, RoPE positions from 0; reseed if a seed is given."""
        self.kv.reset()
        self.cross.reset()
        self.block_index = 0
        if seed is not None:
            self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Re-seed the noise stream; takes effect from the next draw (caches are kept)."""
        self.seed = int(seed)
        self.noise.seed(self.seed)

    @property
    def frame_base(self) -> int:
        """Absolute latent frame that has RoPE position 0 (moves when rebasing)."""
        return self.kv.frame_base

    def set_prompt_embeds(self, embeds: torch.Tensor) -> None:
        """Text context [B, Lt <= text_len, text_dim]; resets only the cross-attention cache."""
        mcfg = self.model.cfg
        assert embeds.ndim == 3 and embeds.shape[0] == self.batch and embeds.shape[2] == mcfg.text_dim, (
            f"prompt embeds {tuple(embeds.shape)} must be "
            f"[{self.batch}, <= {mcfg.text_len}, {mcfg.text_dim}]")
        self.prompt_embeds = embeds.to(device=self.device, dtype=self.dtype, non_blocking=True)
        self.cross.reset()

    def set_steps(self, steps: Sequence[float], warp: bool = True) -> None:
        """Denoising step list for the next blocks: raw config values (warped like the official
        code, e.g. [1000, 750, 500, 250] -> [1000, 937.5, 833.33, 625]) or timesteps if warp=False.

        Builds the per-step tables once: sigmas as host floats, time features on the device."""
        steps = validate_steps(steps, warp)
        self.timesteps = self.scheduler.warp(steps) if warp else torch.tensor(steps, dtype=torch.float32)
        ts = [float(t) for t in self.timesteps]
        self.sigmas = [self.scheduler.sigma_of(t) for t in ts]
        self.one_minus = [one_minus_f32(s) for s in self.sigmas]
        self.t_feats = [self.model.time_features(t) for t in ts]
        self.t_feat_ctx = self.model.time_features(float(self.cfg.context_noise))

    @property
    def num_steps(self) -> int:
        return len(self.sigmas)

    # -- per-block steps (small, so re-cache / video-to-video can reuse them) -------------------
    def _fill_cross(self) -> None:
        """Prompt change: the text K/V of every layer, once, outside the compiled passes."""
        if not self.cross.is_init:
            assert self.prompt_embeds is not None, "call set_prompt_embeds() first"
            self.model.fill_cross(self.prompt_embeds, self.cross)

    def _rope_position(self, start_frame: int) -> int:
        """RoPE frame position of a block starting at ``start_frame``; rebases the cache when it would grow
        past ``rope_rebase_frames`` (cached keys rotated back, the block restarts at position 0)."""
        c, kv = self.cfg, self.kv
        F = c.num_frame_per_block
        pos = start_frame - kv.frame_base
        if c.rope_rebase_frames is not None and pos + F > c.rope_rebase_frames:
            kv.rebase(pos, self.rope.rotate_frames_)  # cached keys get negative positions (sink too)
            log.debug("rebased RoPE by %d frames at block %d", pos, self.block_index)
            pos = 0
        if pos + F > c.max_rope_frames:
            raise RuntimeError(f"RoPE frame position {pos + F} exceeds max_rope_frames {c.max_rope_frames}; "
                               "set rope_rebase_frames")
        return pos

    def plan_block(self) -> BlockPlan:
        F = self.cfg.num_frame_per_block
        start = self.block_index * F
        pos = self._rope_position(start)
        return BlockPlan(start, start * self.tokens_per_frame, self.rope.block(pos, F))

    def _pass(self, x: torch.Tensor, t_feat: torch.Tensor, plan: BlockPlan) -> torch.Tensor:
        """One generator call on the block: writes its K/V, returns the flow."""
        view = self.kv.begin(plan.current_start, self.block_tokens)
        return self.model(x, t_feat, plan.rope, view, self.cross)

    def denoise(self, x: torch.Tensor, plan: BlockPlan, first_step: int = 0,
                renoise_draws: torch.Tensor | None = None) -> torch.Tensor:
        """Steps ``first_step..`` of the step list from x (noise, or noised latents at that step) -> clean x0."""
        self.last_x0 = []
        x0 = x
        for i in range(first_step, self.num_steps):
            x0 = x0_from_flow(self._pass(x, self.t_feats[i], plan), x, self.sigmas[i])
            self.last_x0.append(x0)
            if i + 1 < self.num_steps:
                eps = self.noise.take() if renoise_draws is None else renoise_draws[i].to(self.device, self.dtype)
                x = renoise(x0, eps, self.sigmas[i + 1], self.one_minus[i + 1])
        return x0

    def context_pass(self, x0: torch.Tensor, plan: BlockPlan) -> None:
        """The clean block at t = context_noise overwrites this block's K/V (output discarded); its latents
        go to the latent ring (a later re-cache runs them again)."""
        self._pass(x0, self.t_feat_ctx, plan)
        self.latents.write(plan.start_frame, x0)

    def rope_frames(self, first_frame: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE (cos, sin) of absolute frames [first, first+count) at their positions now, negative ones too
        (frames from before a rebase): cos(-a) = cos(a), sin(-a) = -sin(a) on the frame axis."""
        pos = [a - self.kv.frame_base for a in range(first_frame, first_frame + count)]
        cos, sin = self.rope.positions([abs(p) for p in pos])
        neg = [i for i, p in enumerate(pos) if p < 0]
        if neg:
            S, c_t = self.tokens_per_frame, self.rope.ref.c_t
            sin = sin.clone()
            for i in neg:
                sin[:, i * S:(i + 1) * S, :, :c_t] *= -1
        return cos, sin

    @torch.no_grad()
    def recache(self) -> list[tuple[int, int]]:
        """KV re-cache under the current prompt (call after :meth:`set_prompt_embeds`, before the block).

        Fills the cross-attention cache from the new text, then runs the context pass (t = context_noise)
        over the window's non-sink frames from the latent ring, grouped by the block that made them, oldest
        first; each group attends the sink + the groups already re-cached + itself (what a from-scratch
        rebuild does block by block) and its K/V are rewritten in place: same slots, same RoPE positions.
        Sink K/V, other slots and every index stay as they are. Eager (see ``CausalWanModel.rewrite_kv``).
        Returns the groups as (first frame, count).
        """
        self._fill_cross()
        kv = self.kv
        groups = kv.recache_groups(self.cfg.num_frame_per_block)
        attended = [kv.slots(0, kv.sink_frames)] if kv.sink_frames else []
        for first, count in groups:
            own = kv.slots(first, count)
            attended.append(own)
            self.model.rewrite_kv(self.latents.read(first, count), self.t_feat_ctx, self.rope_frames(first, count),
                                  kv.k, kv.v, torch.cat(attended), own, self.cross)
        log.debug("re-cached %d frames in %d groups at block %d", sum(c for _, c in groups), len(groups),
                  self.block_index)
        return groups

    def _finish_block(self) -> None:
        self.block_index += 1
        if self.device.type == "cuda":
            self.ready_event = torch.cuda.Event()
            self.ready_event.record()
        self.noise.prefetch(self.num_steps)  # next block's draws, while the device still works

    # -- generation -----------------------------------------------------------------------
    @torch.no_grad()
    def next_block_from(self, x0: torch.Tensor, first_step: int) -> torch.Tensor:
        """Video-to-video: the block starts from clean latents ``x0`` [B, F, C, h, w] (the encoded input),
        noised to step ``first_step``'s sigma (``x_t = (1 - sigma) x0 + sigma eps``, one draw of the noise
        stream), then runs the remaining steps and the context pass as usual. ``first_step == num_steps``:
        no step runs, the block is ``x0`` itself (its context pass still runs). Step 0 is :meth:`next_block`."""
        assert 0 < first_step <= self.num_steps, f"first_step {first_step} not in 1..{self.num_steps}"
        assert self.prompt_embeds is not None or self.cross.is_init, "call set_prompt_embeds() first"
        assert x0.shape == self.noise.shape, f"x0 {tuple(x0.shape)} vs {self.noise.shape}"
        self._fill_cross()
        plan = self.plan_block()
        x0 = x0.to(self.device, self.dtype)
        if first_step < self.num_steps:
            x = renoise(x0, self.noise.take(), self.sigmas[first_step], self.one_minus[first_step])
            x0 = self.denoise(x, plan, first_step=first_step)
        else:
            self.last_x0 = [x0]
        self.context_pass(x0, plan)
        self._finish_block()
        return x0

    @torch.no_grad()
    def next_block(self, noise: torch.Tensor | None = None,
                   renoise: torch.Tensor | None = None) -> torch.Tensor:
        """Generate the next block: latents [B, F, 16, h, w] (clean x0 of the last step).

        ``noise`` [B, F, C, h, w] replaces the initial draw; ``renoise`` [steps-1, B, F, C, h, w]
        replaces the draws used to re-noise x0 between steps. Without them both come from the
        stream's generator (initial noise first, then one draw per re-noise, in order).
        """
        assert self.prompt_embeds is not None or self.cross.is_init, "call set_prompt_embeds() first"
        self._fill_cross()
        plan = self.plan_block()
        x = self.noise.take() if noise is None else noise.to(self.device, self.dtype)
        assert x.shape == self.noise.shape, f"noise {tuple(x.shape)} vs {self.noise.shape}"
        x0 = self.denoise(x, plan, renoise_draws=renoise)
        self.context_pass(x0, plan)
        self._finish_block()
        return x0
