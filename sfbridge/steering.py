"""Steering state shared by the control thread (writer) and the engine thread (reader).

Why a shared box instead of a command queue: the control thread must answer a ``prompt``
request at once with the block at which it will apply, even while the engine spends half a
second inside a block on the GPU. The engine takes a snapshot of the box at each block
boundary under the same lock, so ``applies_at_block`` is exact, and the control thread never
waits for the engine.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from dataclasses import dataclass

from sfbridge.generators.base import Steering


def new_stream_id() -> str:
    return secrets.token_hex(6)


@dataclass(frozen=True)
class Change:
    """One accepted steering request, announced by its own ``applied`` event when it takes effect."""

    state_id: int
    kind: str  # "prompt", "seed" or "steps"
    transition: str  # the prompt's transition; "cut" for seed and steps (they switch at once)


@dataclass
class Snapshot:
    """What the engine takes at a block boundary."""

    steering: Steering
    block: int  # index of the block about to be generated
    stream: str
    reset: bool  # the engine must reset the generator before this block
    changes: list[Change]  # every change accepted since the previous snapshot, in state_id order


class SteeringBox:
    """Thread-safe holder of the pending steering state, pause flag and reset requests."""

    def __init__(self, steering: Steering) -> None:
        self.cond = threading.Condition()
        self._pending = steering
        self._changes: list[Change] = []
        self._next_block = 0
        self._reset = True  # the first block of a run starts a scene
        self.stream = new_stream_id()
        self.paused = False
        self.stopping = False

    # --- control thread side -----------------------------------------------------------------

    def _bump(self, change: str, **fields: object) -> tuple[int, int]:
        """New pending state. Every change is kept (not one per kind): each ``state_id`` a client was
        given must show up in an ``applied`` event, even when several land on the same block."""
        state_id = self._pending.state_id + 1
        self._pending = dataclasses.replace(self._pending, state_id=state_id, **fields)
        if change != "reset":  # a reset is announced by the `started` event instead
            transition = str(fields.get("transition", "cut")) if change == "prompt" else "cut"
            self._changes.append(Change(state_id=state_id, kind=change, transition=transition))
        self.cond.notify_all()
        return state_id, self._next_block

    def set_prompt(self, text: str, transition: str, blend_blocks: int) -> tuple[int, int]:
        """-> (state_id, applies_at_block)."""
        with self.cond:
            prev = self._pending.prompt
            return self._bump("prompt", prompt=text, transition=transition, blend_blocks=blend_blocks,
                              prev_prompt=prev, since_block=self._next_block)

    def set_seed(self, seed: int) -> tuple[int, int]:
        with self.cond:
            return self._bump("seed", seed=seed)

    def set_steps(self, steps: tuple[float, ...]) -> tuple[int, int]:
        with self.cond:
            return self._bump("steps", denoising_steps=tuple(float(s) for s in steps))

    def reset(self, prompt: str | None, seed: int | None) -> tuple[int, str]:
        """-> (state_id, new stream id). The scene restarts at the engine's next boundary."""
        with self.cond:
            fields: dict[str, object] = {"transition": "cut", "prev_prompt": None, "since_block": 0}
            if prompt is not None:
                fields["prompt"] = prompt
            if seed is not None:
                fields["seed"] = seed
            state_id, _ = self._bump("reset", **fields)
            self._reset = True
            self._next_block = 0
            self.stream = new_stream_id()
            return state_id, self.stream

    def set_paused(self, paused: bool) -> None:
        with self.cond:
            self.paused = paused
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def peek(self) -> Steering:
        with self.cond:
            return self._pending

    @property
    def next_block(self) -> int:
        with self.cond:
            return self._next_block

    # --- engine side ---------------------------------------------------------------------------

    def take(self) -> Snapshot:
        """Snapshot for the next block; caller holds ``cond`` (it has just waited on it)."""
        reset, self._reset = self._reset, False
        changes, self._changes = self._changes, []
        if reset:
            self._next_block = 0
        snap = Snapshot(steering=self._pending, block=self._next_block, stream=self.stream, reset=reset,
                        changes=changes)
        self._next_block += 1
        return snap

    def give_back(self, changes: list[Change]) -> None:
        """Changes of a block that failed: they are announced with the block that does apply them."""
        with self.cond:
            self._changes = [*changes, *self._changes]
