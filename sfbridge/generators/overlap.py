"""Pipelining: the decode of block k (and its copy to the host) runs while the DiT computes block k+1.

:class:`DecodeStage` owns a :class:`~sfbridge.generators.streaming.FrameDecoder` and one worker
thread. The engine thread hands it each block's latents and gets :class:`PendingFrames` back at
once; decodes run on the worker in submission order, and a scene reset is queued behind them, so
the decoder's streaming state never sees two threads. At most ``max_in_flight`` decodes are queued
or running: that bound is the only time the engine waits for a decode.

What differs between devices sits in :class:`DeviceOps`, so the CPU runs the same code path as CUDA:

- **CPU** (:class:`DeviceOps`): no streams or events; the worker thread computes the decode itself
  and the frames are already in host memory.
- **CUDA** (:class:`CudaOps`): the worker launches the decode on a second stream. The hand-over is an
  event recorded on the compute stream after the DiT; the decode stream waits on it (on the GPU,
  the host does not block), and ``record_stream`` keeps the caching allocator from reusing the
  latents' memory for the next DiT block until the decode stream is done with it. The uint8 frames
  reach the host through one pinned, ``non_blocking`` copy per block; an event recorded after the
  copy marks completion and only the worker thread waits on it, never a device-wide synchronize.

``overlap=False`` runs the same steps inline on the engine thread and the compute stream (the serial
path: benchmarks compare both).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from sfbridge.generators.base import GeneratorError, PendingFrames

log = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 2  # decodes queued or running; each holds one block of latents (~0.6 MB at 480x832 bf16)


class DeviceOps:
    """CPU: decode where you are, frames are host memory already; events are not needed."""

    def handover(self, latents: torch.Tensor) -> Any:
        """Called on the engine thread right after the DiT: whatever the decode must wait for."""
        return None

    @contextlib.contextmanager
    def decode_scope(self, handover: Any) -> Iterator[None]:
        """Where the decode runs (worker thread or engine thread): after ``handover``, on the decode stream."""
        yield

    def to_host(self, frames: torch.Tensor) -> np.ndarray:
        """uint8 ``[N, H, W, 3]`` on the device -> numpy; returns once the frames are readable."""
        return np.ascontiguousarray(frames.numpy())


class CudaOps(DeviceOps):
    """CUDA: a second stream for the decode, events for the hand-over and for completion, pinned memory."""

    def __init__(self, device: torch.device, separate_stream: bool = True) -> None:
        self.device = device
        # High priority: the decode is the tail of every block's latency (a prompt change shows when
        # its block is decoded); the next DiT block fills the GPU around it instead of slowing it down.
        self.stream = torch.cuda.Stream(device, priority=-1) if separate_stream else None

    def handover(self, latents: torch.Tensor) -> Any:
        if self.stream is None:  # serial: same stream, stream order is enough
            return None
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(self.device))
        latents.record_stream(self.stream)  # freed latents stay reserved until the decode stream passes here
        return ready

    @contextlib.contextmanager
    def decode_scope(self, handover: Any) -> Iterator[None]:
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            if handover is not None:
                torch.cuda.current_stream(self.device).wait_event(handover)  # GPU-side wait, host goes on
            yield

    def to_host(self, frames: torch.Tensor) -> np.ndarray:
        host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
        host.copy_(frames, non_blocking=True)  # the one device -> host copy of the block
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        done.synchronize()  # this thread waits for this block only
        return host.numpy()  # the array keeps the pinned tensor alive


def device_ops(device: torch.device, overlap: bool) -> DeviceOps:
    return CudaOps(device, separate_stream=overlap) if device.type == "cuda" else DeviceOps()


class DecodeStage:
    """Runs a decoder inline (serial) or on one worker thread (overlapped); results in submission order."""

    def __init__(self, decoder: Any, device: torch.device, overlap: bool = True,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        if max_in_flight < 1:
            raise GeneratorError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.decoder, self.device = decoder, device
        self.max_in_flight = int(max_in_flight)
        self._slots = threading.BoundedSemaphore(self.max_in_flight)
        self._pool: ThreadPoolExecutor | None = None
        self.overlap = bool(overlap)
        self.ops = device_ops(device, self.overlap)
        self._wanted = self.overlap  # a switch applies at the next reset, when the decoder holds no state
        self._reset_error: Exception | None = None  # set by a queued reset that failed (worker thread)

    def set_overlap(self, overlap: bool) -> None:
        """Serial or overlapped from the next :meth:`reset` on (the decoder's cached tensors must not
        change streams mid-scene)."""
        self._wanted = bool(overlap)

    def submit(self, latents: torch.Tensor, count: int, info: dict[str, Any]) -> np.ndarray | PendingFrames:
        """Decode ``latents`` into ``count`` frames: the array (serial) or its pending frames (overlapped).

        ``info`` gets ``decode_ms`` when the decode is done (before the frames resolve).
        """
        handover = self.ops.handover(latents)
        if not self.overlap:
            return self._decode(latents, handover, count, info)
        pending = PendingFrames(count)
        self._slots.acquire()  # the memory bound: the only wait for a decode on the caller's thread
        try:
            self._worker().submit(self._run, pending, latents, handover, info)
        except BaseException:
            self._slots.release()
            raise
        return pending

    def reset(self) -> None:
        """New scene: the decoder resets after every decode already submitted (queued, in order; the
        caller does not wait, except when switching between serial and overlapped)."""
        if self._pool is None:
            self.decoder.reset()
        else:
            done = self._pool.submit(self._reset_decoder)
            if self._wanted != self.overlap:
                done.result()  # a serial decode on this thread must not race the worker
        if self._wanted != self.overlap:
            self.overlap = self._wanted
            self.ops = device_ops(self.device, self.overlap)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # internals ---------------------------------------------------------------------------------
    def _reset_decoder(self) -> None:
        try:
            self.decoder.reset()
            self._reset_error = None
        except Exception as exc:  # worker thread: the scene's first decode reports it
            log.exception("decoder reset failed")
            self._reset_error = exc

    def _worker(self) -> ThreadPoolExecutor:
        if self._pool is None:  # one worker: decodes (and resets) run strictly in submission order
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sfbridge-decode")
        return self._pool

    def _run(self, pending: PendingFrames, latents: torch.Tensor, handover: Any, info: dict[str, Any]) -> None:
        try:
            if not pending.set_running_or_notify_cancel():
                return
            t0 = time.perf_counter()
            try:
                frames = self._decode(latents, handover, pending.count, info)
            except BaseException as exc:
                pending.seconds = time.perf_counter() - t0
                pending.set_exception(exc)
            else:
                pending.seconds = time.perf_counter() - t0
                pending.set_result(frames)
        finally:
            self._slots.release()

    @torch.no_grad()  # grad mode is per thread: the worker needs its own
    def _decode(self, latents: torch.Tensor, handover: Any, count: int, info: dict[str, Any]) -> np.ndarray:
        if self._reset_error is not None:
            raise GeneratorError(f"decoder reset failed: {self._reset_error}")
        t0 = time.perf_counter()
        with self.ops.decode_scope(handover):
            frames = self.ops.to_host(self.decoder.frames(latents))
        if len(frames) != count:
            raise GeneratorError(f"decoder {self.decoder.name!r} made {len(frames)} frames, expected {count}")
        info["decode_ms"] = 1e3 * (time.perf_counter() - t0)
        return frames
