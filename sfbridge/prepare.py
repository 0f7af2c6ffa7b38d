"""Text encoding ahead of time: one worker thread, at most one job waiting, only what will be shown.

Why not a plain executor: a game that sends 200 prompts in a second would queue 200 encodings,
each seconds of GPU or CPU work on the real model, and all but a few would never be shown. Here a
newer job replaces the waiting one, and before it runs the worker asks the steering box whether
the prompt is still the newest for its block (not superseded, landed or cancelled meanwhile).

When a prompt is encoded (docs/PROTOCOL.md, "Prompt floods"):
- an immediate prompt once no newer prompt request has come for ``settle_s`` (50 ms). In a flood the
  worker therefore waits, and the block boundary takes the newest prompt; the generator encodes that
  one when it applies it (the only encoding the flood costs per block);
- a scheduled prompt when it becomes due: when the engine starts the block before its block (the
  engine's ``on_due``), so a scheduled prompt that is cancelled or superseded early costs nothing;
- a reset's prompt at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("sfbridge.prepare")

SETTLE_S = 0.05


@dataclass(frozen=True)
class Job:
    texts: tuple[str, ...]
    state_id: int | None  # the prompt change it prepares; None = always wanted (a reset's prompt)
    not_before: float  # monotonic time


class PrepareQueue:
    def __init__(self, prepare: Callable[[str], None], wanted: Callable[[int], bool],
                 settle_s: float = SETTLE_S) -> None:
        self.prepare = prepare  # Generator.prepare: thread-safe, encodes one text into the generator's cache
        self.wanted = wanted  # SteeringBox.wants_encoding
        self.settle_s = settle_s
        self.cond = threading.Condition()
        self._waiting: Job | None = None
        self._stopping = False
        self.jobs_run = 0
        self.jobs_dropped = 0  # replaced while waiting, or no longer wanted when their turn came
        self.thread = threading.Thread(target=self._run, name="sfbridge-prepare", daemon=True)
        self.thread.start()

    def submit(self, texts: tuple[str, ...], state_id: int | None, settle: bool = True) -> None:
        """Queue ``texts`` for encoding; a job still waiting is replaced (and counted as dropped)."""
        job = Job(tuple(texts), state_id, time.monotonic() + (self.settle_s if settle else 0.0))
        with self.cond:
            if self._waiting is not None:
                self.jobs_dropped += 1
            self._waiting = job
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self._stopping = True
            self.cond.notify_all()

    def _next(self) -> Job | None:
        with self.cond:
            while not self._stopping:
                job = self._waiting
                if job is not None and time.monotonic() >= job.not_before:
                    self._waiting = None
                    return job
                self.cond.wait(None if job is None else max(0.001, job.not_before - time.monotonic()))
            return None

    def _run(self) -> None:
        while (job := self._next()) is not None:
            if job.state_id is not None and not self.wanted(job.state_id):
                self.jobs_dropped += 1
                continue
            self.jobs_run += 1
            for text in job.texts:
                try:
                    self.prepare(text)
                except Exception:  # the engine hits (and reports) the same problem when it applies the prompt
                    log.exception("preparing prompt %r failed", text[:80])
