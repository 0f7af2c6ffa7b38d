"""Steering state shared by the control thread (writer) and the engine thread (reader).

Why a shared box instead of a command queue: the control thread must answer a ``prompt``
request at once with the block at which it will apply, even while the engine spends half a
second inside a block on the GPU. The engine takes a snapshot of the box at each block
boundary under the same lock, so ``applies_at_block`` is exact, and the control thread never
waits for the engine.

Two kinds of pending change: *immediate* ones (for the engine's next block) are written into the
pending :class:`Steering` at once; *scheduled* ones (``at_block``/``at_pts`` beyond the next block)
wait in a list and are written in when the engine takes their block. At a block, the newest change
of each kind wins; the others of that kind are *superseded* (never shown, never encoded).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from sfbridge.generators.base import BLOCK_FRAMES, FIRST_BLOCK_FRAMES, NATIVE_FPS, Steering
from sfbridge.protocol import MAX_AT_BLOCK, MAX_SCHEDULED, ProtocolError, Schedule

NEXT_BLOCK = Schedule()  # no at_block/at_pts: the engine's next block


def new_stream_id() -> str:
    return secrets.token_hex(6)


def block_at_pts(pts: float, fps: float = NATIVE_FPS) -> int:
    """First block of a scene whose first frame's pts (frame / fps) is >= ``pts``.

    Block 0 starts at frame 0 and has FIRST_BLOCK_FRAMES (9) frames; block b >= 1 starts at frame
    9 + 12 (b - 1). The 1e-9 absorbs float error: 0.5625 s * 16 is frame 9 exactly, block 1.
    """
    frame = math.ceil(pts * fps - 1e-9)
    if frame <= 0:
        return 0
    return min(MAX_AT_BLOCK, 1 + max(0, math.ceil((frame - FIRST_BLOCK_FRAMES) / BLOCK_FRAMES)))


@dataclass(frozen=True, eq=False)
class Change:
    """One accepted steering request; it ends with exactly one applied, superseded or cancelled event."""

    state_id: int
    kind: str  # "prompt", "seed" or "steps"
    transition: str  # the prompt's transition; "cut" for seed and steps (they switch at once)
    at_block: int = 0  # the block it lands at (the reply's applies_at_block)
    scheduled: bool = False  # waits in the scheduled list; False: already written into the pending state
    fields: dict[str, Any] = field(default_factory=dict)  # Steering fields it sets
    texts: tuple[str, ...] = ()  # prompt texts to encode


@dataclass
class Snapshot:
    """What the engine takes at a block boundary."""

    steering: Steering
    block: int  # index of the block about to be generated
    stream: str
    reset: bool  # the engine must reset the generator before this block
    changes: list[Change]  # changes that land at this block (one per kind at most), in state_id order
    superseded: list[tuple[Change, int]] = field(default_factory=list)  # (change, state_id that won)
    due: Change | None = None  # the scheduled prompt that lands at the next block: encode it now


class SteeringBox:
    """Thread-safe holder of the pending steering state, scheduled changes, pause flag and resets."""

    def __init__(self, steering: Steering, fps: float = NATIVE_FPS) -> None:
        self.cond = threading.Condition()
        self.fps = fps
        self._pending = steering
        self._last_id = steering.state_id
        self._changes: list[Change] = []  # immediate: already in _pending, land at the next block
        self._scheduled: list[Change] = []  # sorted by (at_block, state_id)
        self._superseded: list[tuple[Change, int]] = []  # decided by a reset; announced with the next block
        self._shown: Steering | None = None  # steering of the last block taken: what a new blend starts from
        self._next_block = 0
        self._reset = True  # the first block of a run starts a scene
        self.stream = new_stream_id()
        self.paused = False
        self.stopping = False

    # --- control thread side -----------------------------------------------------------------

    def target_block(self, schedule: Schedule) -> int:
        """Block a change with ``schedule`` lands at; caller holds ``cond``. A block that has begun -> the next."""
        want = schedule.at_block if schedule.at_block is not None else (
            block_at_pts(schedule.at_pts, self.fps) if schedule.at_pts is not None else 0)
        return max(self._next_block, want)

    def submit(self, kind: str, fields: dict[str, Any], schedule: Schedule = NEXT_BLOCK,
               texts: tuple[str, ...] = ()) -> tuple[Change, Change | None]:
        """Accept a prompt, seed or steps change -> (the change, an immediate change it supersedes).

        An immediate change supersedes the pending immediate one of its kind at once: both would land
        on the same block, and immediate changes cannot be cancelled, so the older can never show. (A
        scheduled change is only superseded when its block comes: a cancel could still revive it.)
        """
        with self.cond:
            block = self.target_block(schedule)
            scheduled = block > self._next_block
            if scheduled and len(self._scheduled) >= MAX_SCHEDULED:
                raise ProtocolError("too_large", f"{MAX_SCHEDULED} scheduled changes are pending already; "
                                    "cancel some or wait until they land")
            self._last_id += 1
            transition = str(fields.get("transition", "cut")) if kind == "prompt" else "cut"
            change = Change(state_id=self._last_id, kind=kind, transition=transition, at_block=block,
                            scheduled=scheduled, fields=fields, texts=texts)
            older = None
            if scheduled:
                bisect.insort(self._scheduled, change, key=lambda c: (c.at_block, c.state_id))
            else:
                self._pending = dataclasses.replace(self._pending, state_id=change.state_id, **fields)
                older = next((c for c in self._changes if c.kind == kind), None)
                self._changes = [*(c for c in self._changes if c is not older), change]
            self.cond.notify_all()
            return change, older

    def set_prompt(self, text: str, transition: str = "cut", blend_blocks: int = 4) -> tuple[int, int]:
        """Shorthand (tools, tests): an immediate single-prompt change -> (state_id, applies_at_block)."""
        change, _ = self.submit("prompt", {"prompt": text, "prompts": (), "mix": "linear", "interp": "linear",
                                           "recache": False, "transition": transition,
                                           "blend_blocks": blend_blocks}, texts=(text,))
        return change.state_id, change.at_block

    def set_seed(self, seed: int) -> tuple[int, int]:
        """Shorthand (tools, tests): an immediate seed change -> (state_id, applies_at_block)."""
        change, _ = self.submit("seed", {"seed": seed})
        return change.state_id, change.at_block

    def cancel(self, state_id: int) -> Change:
        """Drop a pending scheduled change; ``not_found`` if there is none with that id."""
        with self.cond:
            for i, c in enumerate(self._scheduled):
                if c.state_id == state_id:
                    return self._scheduled.pop(i)
            if any(c.state_id == state_id for c in self._changes):
                raise ProtocolError("not_found", f"state_id {state_id} lands at the next block "
                                    f"({self._next_block}): only scheduled changes can be cancelled")
            raise ProtocolError("not_found", f"no pending scheduled change has state_id {state_id} "
                                "(it has landed, was cancelled or superseded, or was never given)")

    def reset(self, prompt: str | None, seed: int | None) -> tuple[int, str, list[Change]]:
        """-> (state_id, new stream id, the old scene's scheduled changes, now dropped).

        The scene restarts at the engine's next boundary. Immediate changes not yet shown land at the
        new scene's block 0, except those of a kind the reset itself sets (superseded by the reset).
        """
        with self.cond:
            self._last_id += 1
            fields: dict[str, Any] = {"transition": "cut", "prev_prompt": None, "prev_cond": None,
                                      "since_block": 0}
            if prompt is not None:
                fields.update(prompt=prompt, prompts=(), mix="linear", interp="linear", recache=False)
            if seed is not None:
                fields["seed"] = seed
            self._pending = dataclasses.replace(self._pending, state_id=self._last_id, **fields)
            reset_kinds = {k for k, v in (("prompt", prompt), ("seed", seed)) if v is not None}
            self._superseded += [(c, self._last_id) for c in self._changes if c.kind in reset_kinds]
            self._changes = [c for c in self._changes if c.kind not in reset_kinds]
            dropped, self._scheduled = self._scheduled, []
            self._reset = True
            self._next_block = 0
            self.stream = new_stream_id()
            self.cond.notify_all()
            return self._last_id, self.stream, dropped

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

    def scheduled(self) -> list[Change]:
        """Pending scheduled changes, sorted by (at_block, state_id)."""
        with self.cond:
            return list(self._scheduled)

    def wants_encoding(self, state_id: int) -> bool:
        """Whether prompt change ``state_id`` still waits to land and is the newest prompt for its block.

        The text-encoder worker asks this before it encodes: a prompt superseded (or landed, or
        cancelled) meanwhile is not encoded ahead.
        """
        with self.cond:
            pending = [(self._next_block, c) for c in self._changes] + [(c.at_block, c) for c in self._scheduled]
            mine = next((b for b, c in pending if c.state_id == state_id and c.kind == "prompt"), None)
            if mine is None:
                return False
            return state_id == max(c.state_id for b, c in pending if b == mine and c.kind == "prompt")

    @property
    def next_block(self) -> int:
        with self.cond:
            return self._next_block

    # --- engine side ---------------------------------------------------------------------------

    def take(self) -> Snapshot:
        """Snapshot for the next block; caller holds ``cond`` (it has just waited on it)."""
        reset, self._reset = self._reset, False
        if reset:
            self._next_block, self._shown = 0, None
        block = self._next_block
        landing = [c for c in self._scheduled if c.at_block <= block]
        self._scheduled = self._scheduled[len(landing):]
        arrived = sorted([*self._changes, *landing], key=lambda c: c.state_id)
        self._changes = []
        winner = {c.kind: c for c in arrived}  # the newest of each kind
        applied = [c for c in arrived if winner[c.kind] is c]
        superseded = self._superseded + [(c, winner[c.kind].state_id) for c in arrived if winner[c.kind] is not c]
        self._superseded = []
        s = self._pending
        for c in applied:
            if c.scheduled:  # immediate changes are in _pending already
                s = dataclasses.replace(s, **c.fields)
        if applied:  # the newest state_id that has landed (a scheduled one may be older than what shows)
            s = dataclasses.replace(s, state_id=max(s.state_id, applied[-1].state_id))
        if "prompt" in winner:  # a blend starts from what was on screen; nothing is, at a scene's block 0
            shown = self._shown
            s = dataclasses.replace(s, since_block=block, prev_prompt=shown.prompt if shown else None,
                                    prev_cond=shown.cond_key() if shown else None)
        self._pending = self._shown = s
        due = [c for c in self._scheduled if c.at_block == block + 1 and c.kind == "prompt"]
        snap = Snapshot(steering=s, block=block, stream=self.stream, reset=reset, changes=applied,
                        superseded=superseded, due=due[-1] if due else None)
        self._next_block += 1
        return snap

    def give_back(self, snap: Snapshot) -> None:
        """Changes of a block that failed: they are announced with the block that does apply them
        (their fields are in the pending state already, so they come back as immediate changes)."""
        with self.cond:
            back = [dataclasses.replace(c, scheduled=False) for c in snap.changes]
            self._changes = [*back, *self._changes]
            self._superseded = [*snap.superseded, *self._superseded]
