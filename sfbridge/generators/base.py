"""The one interface between the daemon's engine and anything that makes video.

A generator is driven by exactly one thread (the engine). It produces video in *blocks*, the
unit the Self Forcing model denoises at once: the first block of a scene has 9 pixel frames
(3 latent frames -> 1 + 2*4 pixel frames through the causal VAE), every later block 12.
Steering (prompt, seed, transition) changes only take effect at block boundaries, which is
why the engine hands a complete :class:`Steering` to every :meth:`Generator.next_block` call
instead of poking state in between.

Test pattern, tiny random model and the real model all implement this, so the daemon, the
clients and the tests never know which one runs.
"""

from __future__ import annotations

import gc
import sys
from abc import ABC, abstractmethod
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FIRST_BLOCK_FRAMES = 9  # 1 + 4 * (3 - 1): first latent frame decodes to one pixel frame
BLOCK_FRAMES = 12  # 4 pixel frames per latent frame, 3 latent frames per block
NATIVE_FPS = 16.0  # Wan2.1 is trained on 16 fps video
LATENT_TO_PIXEL_FRAMES = 4  # the VAE's temporal upsampling (the first latent frame of a scene gives 1)


def pixel_frames(latent_frames: int, first_of_scene: bool) -> int:
    """Pixel frames a causal Wan decoder (VAE, TAEHV) makes of ``latent_frames``: 4F, or 4F - 3 at a scene start."""
    return LATENT_TO_PIXEL_FRAMES * latent_frames - (LATENT_TO_PIXEL_FRAMES - 1 if first_of_scene else 0)


@dataclass(frozen=True)
class Steering:
    """Everything a client can steer. Immutable: a change makes a new object with a new ``state_id``.

    ``transition`` is ``"cut"`` (the new prompt fully applies at the next block) or ``"blend"``
    (generators interpolate from ``prev_prompt`` to ``prompt`` over ``blend_blocks`` blocks, counted
    from ``since_block``, the block at which this state took effect).
    """

    prompt: str = "a beautiful landscape"
    seed: int = 0
    state_id: int = 0
    transition: str = "cut"
    blend_blocks: int = 4
    prev_prompt: str | None = None
    since_block: int = 0
    denoising_steps: tuple[float, ...] | None = None  # None = generator default
    # Issue 10 (steering part 2). A weighted prompt list replaces the single ``prompt`` when non-empty;
    # ``prompt`` then holds its display text. ``mix`` combines the list (linear | slerp), ``interp`` is the
    # path of a blend transition (linear | slerp), ``recache`` re-runs the context pass over the window's
    # non-sink frames under the new conditioning at the block where this state lands (``since_block``).
    prompts: tuple[tuple[str, float], ...] = ()
    mix: str = "linear"
    interp: str = "linear"
    recache: bool = False
    prev_cond: tuple | None = None  # cond_key() of the state before this prompt change (blend source)
    # Issue 12 (game frames in). ``input_mode`` "v2v" restyles the engine's input frames (InputBlock) at
    # ``input_strength`` (0 = the input as encoded, 1 = text-to-video); ``input_motion`` lowers the strength
    # when the input moves a lot (sfbridge/generators/v2v.py). "off" ignores input frames.
    input_mode: str = "off"
    input_strength: float = 0.7
    input_motion: bool = False

    def weighted(self) -> tuple[tuple[str, float], ...]:
        """The conditioning as (text, weight) pairs: the list, or the single prompt at weight 1."""
        return self.prompts or ((self.prompt, 1.0),)

    def cond_key(self) -> tuple:
        """Identity of the text conditioning: equal keys give the same embedding."""
        return (self.weighted(), self.mix if len(self.weighted()) > 1 else "linear")

    def blend_alpha(self, block_index: int) -> float:
        """Weight of ``prompt`` (vs ``prev_prompt``) for the block ``block_index``; 1.0 = fully new."""
        if self.transition != "blend" or self.prev_prompt is None or self.blend_blocks <= 0:
            return 1.0
        done = block_index - self.since_block + 1
        return float(min(1.0, max(0.0, done / self.blend_blocks)))


def blend_identity(steering: Steering) -> tuple | None:
    """Which blend transition ``steering`` is in (None: no blend). Seed or step changes during a
    blend keep it; a new blend prompt starts a new one. Generators blend from what was on screen
    when a blend started, not from ``prev_prompt``, so a blend sent during a blend does not jump."""
    if steering.transition != "blend" or steering.prev_prompt is None:
        return None
    return (steering.prompt, steering.since_block)


@dataclass
class InputBlock:
    """The game's frames for one block, already at the generator's size and resampled to 16 fps.

    ``frames`` is uint8 ``[N, H, W, 3]`` (N = the block's frame count: 9 for a scene's first block, 12
    after); ``sources[i]`` is ``(client, seq, t_cap)`` of the input frame in slot i (repeats when the
    input was slower than 16 fps); ``fresh`` is False when the block holds a frame that arrived earlier
    (hold rule, sfbridge/input.py). ``prev`` is the last frame of the previous block's input, if any
    (motion between blocks).
    """

    frames: np.ndarray
    sources: list[tuple[str, int, float]]
    prev: np.ndarray | None = None
    fresh: bool = True


class PendingFrames(Future):
    """A block's frames while they are still being decoded: a Future of the ``[N, H, W, 3]`` uint8 array.

    It knows ``N`` (``len()``) before the frames exist, so the engine numbers the frames (``seq``) and
    moves on to the next block at once; whoever needs the pixels calls ``result()``.
    """

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = int(count)
        self.seconds = 0.0  # time the decode itself took; set before the result

    def __len__(self) -> int:
        return self.count


def resolve(frames: np.ndarray | PendingFrames) -> np.ndarray:
    """The frames of a block, waiting for them if they are still being decoded."""
    return frames.result() if isinstance(frames, Future) else frames


@dataclass
class Block:
    """One block of video: ``frames`` is ``[N, H, W, 3]`` uint8 RGB, C-contiguous, or
    :class:`PendingFrames` of it (only from :meth:`Generator.submit_block`)."""

    frames: np.ndarray | PendingFrames
    index: int  # block index since the scene started (reset sets it back to 0)
    first_frame: int  # frame number (since the scene started) of frames[0]
    state_id: int  # Steering.state_id that produced it
    info: dict[str, Any] = field(default_factory=dict)  # generator-specific timings etc.


class GeneratorError(RuntimeError):
    """A generator could not be created or could not produce a block; the message says why."""


class Generator(ABC):
    """Base class of every video source. Not thread-safe: only the engine thread calls it."""

    name: str = "base"
    width: int
    height: int
    fps: float = NATIVE_FPS

    @abstractmethod
    def reset(self, steering: Steering) -> None:
        """Start a new scene: clear every cache; the next block is block 0 again."""

    @abstractmethod
    def next_block(self, steering: Steering) -> Block:
        """Produce the next block under ``steering`` (which may differ from the previous call's)."""

    def submit_block(self, steering: Steering, inputs: InputBlock | None = None) -> Block:
        """Like :meth:`next_block`, but ``frames`` may be :class:`PendingFrames` still decoding, so the
        caller can start the next block while this one decodes (docs/SELF_FORCING.md, "Pipelining").
        Blocks come out in call order; a ``reset`` also applies in call order. Default: ``next_block``.

        ``inputs``: the block's input frames when ``steering.input_mode`` is "v2v" and input arrived (only
        passed to generators whose :meth:`supports_input` is True; None means text-to-video).
        """
        if inputs is not None:
            return self.next_block(steering, inputs=inputs)  # type: ignore[call-arg]
        return self.next_block(steering)

    def describe(self) -> dict[str, Any]:
        """Static facts for ``status``: model name, resolution, fps and anything else useful."""
        return {"model": self.name, "width": self.width, "height": self.height, "fps": self.fps}

    def supports_steps(self) -> bool:
        """Whether ``Steering.denoising_steps`` means anything to this generator."""
        return False

    def supports_input(self) -> bool:
        """Whether this generator takes input frames (video-to-video); its ``next_block`` then takes
        ``inputs: InputBlock | None = None`` as a keyword argument."""
        return False

    def prepare(self, prompt: str) -> None:
        """Optional and thread-safe: do slow per-prompt work (text encoding) ahead of time.

        The daemon calls it from a worker thread as soon as a prompt request arrives, so the block
        that applies the prompt does not stall on it. Default: nothing to prepare.
        """

    def on_oom(self) -> None:
        """Out of GPU memory inside a block: free what can be rebuilt (engine thread; the engine resets the
        scene next, see sfbridge/oom.py). Default: collect garbage and hand PyTorch's cached CUDA blocks back,
        when CUDA is in use. Subclasses drop their own caches first, then call this."""
        torch = sys.modules.get("torch")  # never imported here: testsrc runs without torch
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            gc.collect()
            torch.cuda.empty_cache()

    def step_down(self) -> str | None:
        """Switch to a lighter configuration after repeated OOMs -> its name (e.g. a preset), or None when
        there is nothing lighter. Takes effect from the next scene; the engine resets the scene next."""
        return None

    def close(self) -> None:
        """Free resources (GPU memory, files). Called once, from the engine thread."""
