"""The streaming core shared by ``tiny`` and ``self-forcing``: pipeline + decoder -> blocks, with steering.

:class:`StreamingGenerator` applies steering at block boundaries (prompt / blend changes reset only
the cross-attention cache, weighted prompt lists and blends go through :mod:`.conditioning`, a
``recache`` prompt change re-runs the window's context passes under the new text first
(``StreamPipeline.recache``), a seed change reseeds the noise, ``denoising_steps`` sets the step
list) and turns each block's latents into uint8 frames through a :class:`FrameDecoder`; the
subclasses only say where text embeddings come from. A :class:`~sfbridge.generators.overlap.DecodeStage`
runs the decoder: overlapped by default, so :meth:`StreamingGenerator.submit_block` returns as soon as
the DiT is done and the decode runs while the caller starts the next block.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from sfbridge.generators.base import (
    NATIVE_FPS,
    Block,
    Generator,
    GeneratorError,
    InputBlock,
    Steering,
    pixel_frames,
    resolve,
)
from sfbridge.generators.conditioning import blend as mix_blend
from sfbridge.generators.conditioning import (
    blend_alpha,
    blend_identity,
    mix_weighted,
    prompt_identity,
    source_key,
)
from sfbridge.generators.overlap import DEFAULT_MAX_IN_FLIGHT, DecodeStage
from sfbridge.generators.v2v import InputEncoder, effective_strength, first_step

# ------------------------------------------------------------------------------------------------
# Decoders: latents [1, F, 16, h, w] -> uint8 frames [N, H, W, 3] numpy, with a per-scene state


class FrameDecoder:
    """Streaming latent -> uint8 RGB decoder; ``reset`` starts a new scene (first block 9 frames).

    Subclasses override :meth:`frames` (frames stay on the device; the decode stage copies them to
    the host once per block) or :meth:`push` (host frames directly, e.g. a numpy decoder).
    """

    name = "base"

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.frames is FrameDecoder.frames and cls.push is FrameDecoder.push:
            raise TypeError(f"{cls.__name__} must override frames() or push()")

    def frames(self, latents: torch.Tensor) -> torch.Tensor:
        """[1, F, 16, h, w] latents -> uint8 [N, H, W, 3] on the decoder's device."""
        return torch.from_numpy(np.ascontiguousarray(self.push(latents)))

    def push(self, latents: torch.Tensor) -> np.ndarray:
        """[1, F, 16, h, w] latents -> uint8 [N, H, W, 3] numpy."""
        return self.frames(latents).cpu().numpy()

    def reset(self) -> None:
        raise NotImplementedError


class VAEFrames(FrameDecoder):
    """Exact streaming Wan2.1 VAE decode (the official decoder)."""

    name = "vae"

    def __init__(self, vae: Any, latent_frames_per_call: int | None = 1) -> None:
        from sfbridge.model.vae import StreamingVAEDecoder

        self.stream = StreamingVAEDecoder(vae, latent_frames_per_call)

    def frames(self, latents: torch.Tensor) -> torch.Tensor:
        from sfbridge.model.vae import to_uint8_rgb

        return to_uint8_rgb(self.stream.push(latents))

    def reset(self) -> None:
        self.stream.reset()


class TAEHVFrames(FrameDecoder):
    """TAEHV (tiny autoencoder): approximate but several times faster than the VAE."""

    name = "taehv"

    def __init__(self, taehv: Any) -> None:
        from sfbridge.model.taehv import StreamingTAEHV

        self.stream = StreamingTAEHV(taehv)

    def frames(self, latents: torch.Tensor) -> torch.Tensor:
        from sfbridge.model.taehv import frames_to_uint8

        return frames_to_uint8(self.stream.push(latents))

    def reset(self) -> None:
        self.stream.reset()


# ------------------------------------------------------------------------------------------------


def resolve_overlap(overlap: bool | str, device: torch.device) -> bool:
    """``auto`` overlaps on CUDA only: there the decode runs on its own stream beside the DiT; on a CPU both
    compete for the same cores and the tiny model measured slower and laggier overlapped (SELF_FORCING.md)."""
    if isinstance(overlap, bool):
        return overlap
    if overlap not in ("auto", "on", "off"):
        raise GeneratorError(f"overlap must be auto, on or off, got {overlap!r}")
    return device.type == "cuda" if overlap == "auto" else overlap == "on"


class StreamingGenerator(Generator):
    """Endless block stream of a :class:`StreamPipeline` + :class:`FrameDecoder`; subclasses give text embeddings."""

    def __init__(self, pipe: Any, decoder: FrameDecoder, width: int, height: int, seed: int = 0,
                 steps: tuple[float, ...] | list[float] | None = None, overlap: bool | str = "auto",
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        self.pipe, self.decoder = pipe, decoder
        self.stage = DecodeStage(decoder, pipe.device, overlap=resolve_overlap(overlap, pipe.device),
                                 max_in_flight=max_in_flight)
        self.width, self.height, self.fps = int(width), int(height), NATIVE_FPS
        self.default_steps = tuple(float(s) for s in steps) if steps else tuple(pipe.cfg.denoising_step_list)
        self._steps: tuple[float, ...] = ()
        self._set_steps(self.default_steps)
        self._text_key: tuple | None = None
        self._blend: tuple | None = None  # identity of the running blend transition
        self._blend_from: torch.Tensor | None = None  # conditioning the running blend started from
        self._last_embeds: torch.Tensor | None = None  # conditioning of the last block
        self._cond_last: tuple[tuple, torch.Tensor] | None = None  # (cond_key, embedding) of the last mix
        self._recached: tuple | None = None  # prompt_identity() of the last re-cache
        self._seed = int(seed)
        self._frame = 0

    # subclasses -----------------------------------------------------------------------------
    def _embeds(self, prompt: str) -> torch.Tensor:
        """[1, <= text_len, text_dim] embedding of ``prompt`` (should be cached by the subclass)."""
        raise NotImplementedError

    # Generator --------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "overlap": self.stage.overlap, "compile": self.pipe.model.compiled}

    def supports_steps(self) -> bool:
        return True

    # video-to-video (issue 12; sfbridge/generators/v2v.py) -------------------------------------
    _v2v: InputEncoder | None = None  # built on the first v2v block (self-forcing loads its encoder then)

    def supports_input(self) -> bool:
        return True

    def _make_input_encoder(self) -> InputEncoder:
        """The streaming encoder of input frames into this generator's latent space (subclasses)."""
        raise GeneratorError(f"{self.name}: no input encoder")

    def _block_latents(self, steering: Steering, inputs: InputBlock | None) -> tuple[torch.Tensor, dict]:
        """The DiT part of a block: text-to-video, or from the encoded input noised to the block's strength.

        Strength 1.0 (or motion-adapted to the first step's sigma) is ``pipe.next_block()`` itself, input not
        encoded: text-to-video bit for bit. A block without input resets the encoder (its scene restarts)."""
        if inputs is None or steering.input_mode != "v2v":
            if self._v2v is not None:
                self._v2v.reset()
            return self.pipe.next_block(), {}
        strength = effective_strength(steering, inputs)
        k = first_step(self.pipe.sigmas, strength)
        info: dict = {"strength": strength, "first_step": k}
        if k == 0:
            if self._v2v is not None:
                self._v2v.reset()
            return self.pipe.next_block(), info
        if self._v2v is None:
            t0 = time.perf_counter()
            self._v2v = self._make_input_encoder()
            info["encoder_load_ms"] = 1e3 * (time.perf_counter() - t0)
        t0 = time.perf_counter()
        x0 = self._v2v.encode(inputs)
        info["encode_ms"] = 1e3 * (time.perf_counter() - t0)
        return self.pipe.next_block_from(x0, k), info

    def _set_steps(self, steps: tuple[float, ...]) -> None:
        try:
            self.pipe.set_steps(steps)
        except ValueError as e:
            raise GeneratorError(f"{self.name}: {e}") from e
        self._steps = tuple(steps)

    def _cond(self, key: tuple) -> torch.Tensor:
        """Embedding of a ``Steering.cond_key()``: one prompt as encoded, a weighted list mixed (conditioning.py)."""
        if self._cond_last is not None and self._cond_last[0] == key:
            return self._cond_last[1]
        pairs, mode = key
        try:
            e = mix_weighted(pairs, mode, self._embeds)
        except ValueError as err:
            raise GeneratorError(f"{self.name}: {err}") from err
        self._cond_last = (key, e)
        return e

    def _apply(self, steering: Steering) -> tuple[float, bool]:
        """Bring prompt, seed and steps in line with ``steering`` for the next block.

        Returns (blend alpha, whether this block re-caches). A blend starts from the conditioning on screen
        (``prev_cond`` only when nothing was shown yet); its first block already moves (alpha 1/N). A
        ``recache`` state re-caches once, at the first block that sees its prompt change (with blend: the
        first blended block), after the new conditioning is set.
        """
        steps = tuple(steering.denoising_steps) if steering.denoising_steps else self.default_steps
        if steps != self._steps:
            self._set_steps(steps)
        if steering.seed != self._seed:  # takes effect from this block's noise on
            self._seed = int(steering.seed)
            self.pipe.reseed(self._seed)
        alpha = blend_alpha(steering, self.pipe.block_index)
        blend = blend_identity(steering)
        if blend != self._blend:  # a new blend starts from what the last block was conditioned on,
            self._blend = blend  # so a blend sent while another runs continues without a jump
            self._blend_from = self._last_embeds
        key = (steering.cond_key(), blend, alpha, steering.interp)
        if key != self._text_key:  # new conditioning: only the cross-attention cache is reset
            e = self._cond(steering.cond_key())
            if alpha < 1.0 and blend is not None:
                src = self._blend_from if self._blend_from is not None else self._cond(source_key(steering))
                try:
                    e = mix_blend(src.to(e.device, e.dtype), e, alpha, steering.interp)
                except ValueError as err:
                    raise GeneratorError(f"{self.name}: {err}") from err
            self.pipe.set_prompt_embeds(e)
            self._text_key = key
            self._last_embeds = e
        ident = prompt_identity(steering)
        recache = steering.recache and ident != self._recached
        if steering.recache:
            self._recached = ident
        return alpha, recache

    def on_oom(self) -> None:
        """Drop the conditioning caches (rebuilt from the prompt at the next block; the engine resets the
        scene, which clears the KV cache), then let PyTorch hand its cached CUDA blocks back."""
        self._text_key, self._cond_last = None, None
        self._blend, self._blend_from, self._last_embeds = None, None, None
        super().on_oom()

    def _shrink_window(self, window: int, sink: int) -> None:
        """A rolling window of ``window`` latent frames (``sink`` kept), from the next reset on: a new
        pipeline on the same weights (its KV cache is sized by the window), the step list carried over."""
        from sfbridge.model.pipeline import StreamPipeline

        old = self.pipe
        cfg = dataclasses.replace(old.cfg, local_attn_size=int(window), sink_size=int(sink))
        self.pipe = StreamPipeline(old.model, cfg, seed=self._seed)
        self.pipe.set_steps(self._steps)
        self._text_key = None
        del old
        super().on_oom()  # the old KV cache is garbage now

    def set_overlap(self, overlap: bool) -> None:
        """Decode overlapped with the next DiT block (default) or serially, from the next reset on."""
        self.stage.set_overlap(overlap)

    def reset(self, steering: Steering) -> None:
        self._seed = int(steering.seed)
        self.pipe.reset(self._seed)
        self.stage.reset()  # queued behind the decodes of the old scene
        self._text_key = None
        self._blend, self._blend_from, self._last_embeds = None, None, None
        self._recached = None
        self._frame = 0
        if self._v2v is not None:
            self._v2v.reset()

    def submit_block(self, steering: Steering, inputs: InputBlock | None = None) -> Block:
        """DiT now; the decode overlapped (frames pending) or, serially, done before returning.

        ``info``: ``dit_ms`` (host time of the DiT call incl. a re-cache: on CUDA, where nothing here
        synchronizes, that is mostly launch time), ``decode_ms`` once decoded, ``blend_alpha``, ``steps``,
        ``recached_frames`` (frames whose K/V were re-cached before this block, 0 if none); with input
        (v2v) also ``strength`` (after motion adaptation), ``first_step``, ``encode_ms``.
        """
        t0 = time.perf_counter()
        alpha, recache = self._apply(steering)
        index = self.pipe.block_index
        recached = sum(n for _, n in self.pipe.recache()) if recache else 0
        latents, v2v = self._block_latents(steering, inputs)  # [1, F, 16, h, w]
        count = pixel_frames(latents.shape[1], first_of_scene=self._frame == 0)
        info = {"dit_ms": 1e3 * (time.perf_counter() - t0), "blend_alpha": alpha, "steps": list(self._steps),
                "recached_frames": recached, **v2v}
        block = Block(frames=self.stage.submit(latents, count, info), index=index, first_frame=self._frame,
                      state_id=steering.state_id, info=info)
        self._frame += count
        return block

    def next_block(self, steering: Steering, inputs: InputBlock | None = None) -> Block:
        t0 = time.perf_counter()
        block = self.submit_block(steering, inputs)
        block.frames = resolve(block.frames)
        block.info["total_ms"] = 1e3 * (time.perf_counter() - t0)
        return block

    def close(self) -> None:
        self.stage.close()
