"""asyncio flavour of :class:`sfbridge.Client` (``zmq.asyncio``), for async apps and servers.

Same protocol, same Lazy Pirate retry policy, same latest-frame draining; every call is a
coroutine and ``subscribe`` is an async iterator.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from sfbridge.client import (
    INPUT_LINGER_MS,
    INPUT_SNDHWM,
    REQUEST_RETRIES,
    REQUEST_TIMEOUT_S,
    ClientBase,
    DaemonUnavailable,
    Frame,
    FrameKey,
    check_seed,
    decode_frame,
    input_endpoint,
    no_frames_hint,
    reply_result,
    request_body,
    secure,
    unavailable,
)
from sfbridge.input_frames import (
    DEFAULT_INPUT_FPS,
    DEFAULT_STRENGTH,
    check_fps,
    input_args,
    input_message,
)
from sfbridge.protocol import EVENT_TOPIC, FRAME_FORMATS, pack, unpack
from sfbridge.steering_args import PromptEntry, check_state_id, prompt_args, schedule_args, steps_args

log = logging.getLogger("sfbridge.client")


class AsyncClient(ClientBase):
    """Endpoints and CURVE keys resolve as for :class:`sfbridge.Client`: arguments, then ``SFBRIDGE_*``,
    then defaults (no keys: NULL)."""

    def __init__(self, control: str | None = None, frames: str | None = None,
                 timeout: float = REQUEST_TIMEOUT_S, retries: int = REQUEST_RETRIES, *,
                 input: str | None = None, client_id: str | None = None, server_key: str | os.PathLike | None = None,
                 client_key: str | os.PathLike | None = None) -> None:
        super().__init__(control, frames, timeout, retries, input, client_id, server_key, client_key)
        self._input_sock: zmq.asyncio.Socket | None = None
        self.ctx = zmq.asyncio.Context.instance()

    def _socket(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            self._sock = self.ctx.socket(zmq.DEALER)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.ROUTING_ID, self.routing_id)  # a retry on a new socket applies once
            secure(self._sock, self.keys)
            self._sock.connect(self.control_endpoint)
        return self._sock

    async def request(self, op: str, **args: Any) -> dict:
        rid = next(self._ids)
        body = request_body(op, rid, args)
        for _attempt in range(self.retries):
            sock = self._socket()
            try:
                await sock.send(body, zmq.NOBLOCK)
            except zmq.Again:  # no pipe left: a refused handshake (see sfbridge.client.send_now)
                self._drop_socket()
                continue
            while await sock.poll(int(self.timeout * 1000), zmq.POLLIN):
                result = reply_result(unpack(await sock.recv()), rid)
                if result is not None:
                    return result
            self._drop_socket()
        raise unavailable(self.control_endpoint, self.retries, self.timeout, self.keys)

    async def status(self) -> dict:
        return await self.request("status")

    async def ping(self) -> dict:
        return await self.request("ping")

    async def set_prompt(self, text: str | None = None, transition: str = "cut", blend_blocks: int | None = None, *,
                         prompts: Iterable[PromptEntry] | None = None, interp: str | None = None,
                         mix: str | None = None, recache: bool = False, at_block: int | None = None,
                         at_pts: float | None = None) -> dict:
        """As :meth:`sfbridge.Client.set_prompt`."""
        return await self.request("prompt", **prompt_args(text, transition, blend_blocks, prompts=prompts,
                                                           interp=interp, mix=mix, recache=recache,
                                                           at_block=at_block, at_pts=at_pts))

    async def set_seed(self, seed: int, at_block: int | None = None, at_pts: float | None = None) -> dict:
        return await self.request("seed", seed=check_seed(seed), **schedule_args(at_block, at_pts))

    async def set_steps(self, steps: Iterable[int], at_block: int | None = None, at_pts: float | None = None) -> dict:
        return await self.request("steps", **steps_args(steps, at_block, at_pts))

    async def cancel(self, state_id: int) -> dict:
        return await self.request("cancel", state_id=check_state_id(state_id))

    async def pause(self) -> dict:
        return await self.request("pause")

    async def resume(self) -> dict:
        return await self.request("resume")

    async def reset(self, prompt: str | None = None, seed: int | None = None) -> dict:
        args = {k: v for k, v in (("prompt", prompt), ("seed", seed)) if v is not None}
        return await self.request("reset", **args)

    async def set_input(self, mode: str, strength: float = DEFAULT_STRENGTH, motion_adaptive: bool = False,
                        at_block: int | None = None, at_pts: float | None = None) -> dict:
        """As :meth:`sfbridge.Client.set_input`."""
        return await self.request("input", **input_args(mode, strength, motion_adaptive, at_block, at_pts))

    async def send_frame(self, image: np.ndarray | bytes, *, t_cap: float | None = None, client: str | None = None,
                         seq: int | None = None) -> dict[str, Any]:
        """As :meth:`sfbridge.Client.send_frame` (never waits: the PUB drops frames at its HWM)."""
        header, payload = input_message(image, client=self.client_id if client is None else client,
                                        seq=next(self._input_seq) if seq is None else seq, t_cap=t_cap)
        if self._input_sock is None:
            self.input_endpoint = self.input_endpoint or input_endpoint(None)
            self._input_sock = self.ctx.socket(zmq.PUB)
            self._input_sock.setsockopt(zmq.LINGER, INPUT_LINGER_MS)
            self._input_sock.setsockopt(zmq.SNDHWM, INPUT_SNDHWM)
            secure(self._input_sock, self.keys)  # CURVE like every other socket of this client
            self._input_sock.connect(self.input_endpoint)
        await self._input_sock.send_multipart([pack(header), payload], flags=zmq.NOBLOCK, copy=False)
        return header

    async def stream_frames(self, frames: Iterable[np.ndarray | bytes] | AsyncIterable[np.ndarray | bytes],
                            fps: float = DEFAULT_INPUT_FPS) -> int:
        """As :meth:`sfbridge.Client.stream_frames`; ``frames`` may also be an async iterable."""
        period = 1.0 / check_fps(fps)
        due = time.monotonic()
        sent = 0

        async def paced(image: np.ndarray | bytes) -> None:
            nonlocal due, sent
            now = time.monotonic()
            if now < due:
                await asyncio.sleep(due - now)
            else:
                due = now
            await self.send_frame(image)
            sent += 1
            due += period

        if isinstance(frames, AsyncIterable):
            async for image in frames:
                await paced(image)
        else:
            for image in frames:
                await paced(image)
        return sent

    async def subscribe(self, format: str = "jpeg", latest_only: bool = True,
                        timeout: float | None = None) -> AsyncIterator[Frame]:
        if format not in FRAME_FORMATS:
            raise ValueError(f"format must be one of {FRAME_FORMATS}, got {format!r}")
        sock = self.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 4)
        sock.setsockopt(zmq.SUBSCRIBE, format.encode())
        secure(sock, self.keys)
        sock.connect(self.frames_endpoint)
        seen = FrameKey()
        try:
            while True:
                if not await sock.poll(None if timeout is None else int(timeout * 1000), zmq.POLLIN):
                    raise DaemonUnavailable(f"no frames from {self.frames_endpoint} within {timeout} s"
                                            f"{no_frames_hint(self.keys)}")
                msg = await sock.recv_multipart()
                if latest_only:
                    while True:
                        try:
                            msg = await sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                if len(msg) < 3 or msg[0] == EVENT_TOPIC.encode():
                    continue
                header = unpack(msg[1])
                if not seen.is_new(header):
                    continue
                image: np.ndarray = decode_frame(header["format"], header, msg[2])
                yield Frame(image=image, header=header, payload=msg[2])
        finally:
            sock.close(linger=0)

    def close(self) -> None:
        self._drop_socket()
        if self._input_sock is not None:
            self._input_sock.close()
            self._input_sock = None
