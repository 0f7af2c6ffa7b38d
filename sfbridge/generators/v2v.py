"""Video-to-video pieces shared by the generators: motion-adaptive strength, the step to start from, and the
streaming input encoder with its scene rules.

Strength (docs/PROTOCOL.md "Input frames"): the block's input latents x0 are noised to the step list's
sigma where denoising starts, ``x_t = (1 - sigma) x0 + sigma * eps`` (flow matching), and only the
remaining steps run. It starts at the first step whose sigma <= strength; strength 1.0 starts at the
first step with pure noise, which is text-to-video exactly (the input is not even encoded); below every
sigma of the list no step runs and the block is the input as encoded.

Motion-adaptive (after StreamDiffusionV2's motion-aware noise controller): a moving input needs less
noise, or the model redraws what moved and the picture swims. With ``m`` the mean absolute difference of
consecutive input frames of the block (the previous block's last frame first), as a fraction of full
scale (0..1, sampled on every 4th pixel)::

    strength_eff = strength * (1 - (1 - MOTION_FLOOR) * min(1, m / MOTION_FULL))

so a still input keeps the strength, and from ``m = MOTION_FULL`` (8 % of full scale per frame: a fast
pan) on it is halved.

torch is imported only by :class:`InputEncoder` (the tiny and self-forcing generators): testsrc uses
:func:`effective_strength` for its v2v input and must not load torch (about 200 MB of RSS) to do so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sfbridge.generators.base import InputBlock, Steering

if TYPE_CHECKING:
    import torch

log = logging.getLogger("sfbridge.model.v2v")

MOTION_FULL = 0.08  # mean |frame difference| / 255 at which the strength is lowered the most
MOTION_FLOOR = 0.5  # strength factor at MOTION_FULL and above
MOTION_STRIDE = 4  # pixels sampled per axis: the measure only needs the average


def motion(inputs: InputBlock) -> float:
    """Mean absolute difference of consecutive frames (``prev`` first), 0..1 of full scale."""
    frames = inputs.frames[:, ::MOTION_STRIDE, ::MOTION_STRIDE]
    if inputs.prev is not None:
        frames = np.concatenate([inputs.prev[None, ::MOTION_STRIDE, ::MOTION_STRIDE], frames])
    if len(frames) < 2:
        return 0.0
    diffs = np.abs(np.diff(frames.astype(np.int16), axis=0))
    return float(diffs.mean()) / 255.0


def effective_strength(steering: Steering, inputs: InputBlock) -> float:
    """The block's strength: ``input_strength``, lowered by motion when ``input_motion`` is on (formula above)."""
    s = float(steering.input_strength)
    if not steering.input_motion:
        return s
    return s * (1.0 - (1.0 - MOTION_FLOOR) * min(1.0, motion(inputs) / MOTION_FULL))


def first_step(sigmas: Sequence[float], strength: float) -> int:
    """Index of the first step whose sigma <= strength; ``len(sigmas)`` when none is (no step runs)."""
    return next((i for i, s in enumerate(sigmas) if s <= strength + 1e-9), len(sigmas))


class InputEncoder:
    """A streaming encoder (StreamingVAEEncoder or StreamingTAEHVEncoder) fed one InputBlock per block.

    Both encoders make 3 latents of a scene's first 9 frames, then 3 of every 12. The encoder's scene
    starts at the first block it sees after a reset (:meth:`reset`: a new scene, or a block without
    input); if that block has 12 frames, its first 3 are left out so the framing stays 9 -> 3, 12 -> 3.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.started = False

    def reset(self) -> None:
        if self.started:
            self.stream.reset()
        self.started = False

    def encode(self, inputs: InputBlock) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> latents [1, 3, C, H/8, W/8] in the generator's space."""
        import torch  # here, not at module level: testsrc imports this module and runs without torch

        frames = torch.from_numpy(np.ascontiguousarray(inputs.frames))
        if not self.started and len(frames) > 9:
            frames = frames[len(frames) - 9:]
        self.started = True
        latents = self.stream.push(frames.permute(0, 3, 1, 2).unsqueeze(0))  # [1, T, 3, H, W] uint8
        assert latents.shape[1] == 3, f"input encoder gave {latents.shape[1]} latent frames, expected 3"
        return latents
