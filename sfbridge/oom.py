"""Out of GPU memory inside a block: free the caches, restart the scene, and step down if it happens again.

Why here and not in the generator: whether an OOM is a one-off (a fragmented allocator, another
process that briefly took memory) or the configuration does not fit is only visible over several
blocks, and the reaction is announced to clients. The engine calls :meth:`OomPolicy.handle` on its
own thread for every OOM, from a block or from its decode; the generator only offers the two hooks
:meth:`Generator.on_oom` (drop what can be rebuilt) and :meth:`Generator.step_down` (a lighter
preset, or None).

Rule: every OOM gives an ``error`` event (code ``out_of_memory``) and ``on_oom()``; the engine resets
the scene as after any failed block. A second OOM within STEP_DOWN_WITHIN_BLOCKS blocks of the first
calls ``step_down()``: a new preset gives a ``warning`` event naming it (and a line in
``status.warnings``), then the count starts again; None (nothing lighter) is said in the error event.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from sfbridge.generators.base import Generator
from sfbridge.protocol import make_event

log = logging.getLogger("sfbridge.engine")

STEP_DOWN_WITHIN_BLOCKS = 4  # a second OOM this many blocks (attempts) after the first steps down


def is_oom(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is torch's CUDA out-of-memory error.

    torch is only looked up, never imported: the test pattern runs without it."""
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    seen = 0
    while exc is not None and oom is not None and seen < 8:
        if isinstance(exc, oom):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class OomPolicy:
    """Counts OOMs by block attempt and decides when to step down. Engine thread only."""

    def __init__(self, within_blocks: int = STEP_DOWN_WITHIN_BLOCKS) -> None:
        self.within_blocks = within_blocks
        self.count = 0
        self.warnings: list[str] = []  # read by `status` (a list replaced, never mutated)
        self._last: int | None = None  # attempt number of the last OOM not yet answered by a step-down

    def handle(self, generator: Generator, attempt: int, block: int, exc: BaseException) -> list[dict[str, Any]]:
        """React to an OOM on block ``block`` (the engine's ``attempt``-th block start) -> events to send."""
        self.count += 1
        try:
            generator.on_oom()
        except Exception:  # freeing memory must not turn one fault into two
            log.exception("%s.on_oom() failed", type(generator).__name__)
        again = self._last is not None and attempt - self._last <= self.within_blocks
        self._last = attempt
        message = f"out of GPU memory on block {block}: caches freed, the scene restarts ({exc})"
        events = []
        if again:
            preset = generator.step_down()
            self._last = None
            if preset is None:
                message += "; no lighter preset to step down to"
            else:
                warning = (f"out of GPU memory twice within {self.within_blocks} blocks: stepped down to "
                           f"{preset!r}")
                log.warning("%s", warning)
                self.warnings = [*self.warnings, warning]
                events.append(make_event("warning", code="stepped_down", preset=preset, message=warning))
        log.error("%s", message)
        return [make_event("error", code="out_of_memory", block=block, message=message[:500]), *events]
