"""asyncio flavour of :class:`sfbridge.Client` (``zmq.asyncio``), for async apps and servers.

Same protocol, same Lazy Pirate retry policy, same latest-frame draining; every call is a
coroutine and ``subscribe`` is an async iterator.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import AsyncIterator, Iterable
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from sfbridge.client import (
    REQUEST_RETRIES,
    REQUEST_TIMEOUT_S,
    DaemonUnavailable,
    Frame,
    FrameKey,
    check_seed,
    client_endpoints,
    decode_frame,
    no_frames_hint,
    reply_result,
    request_body,
    secure,
    unavailable,
)
from sfbridge.protocol import EVENT_TOPIC, FRAME_FORMATS, unpack
from sfbridge.security import client_keys
from sfbridge.steering_args import PromptEntry, check_state_id, prompt_args, schedule_args, steps_args

log = logging.getLogger("sfbridge.client")


class AsyncClient:
    """Endpoints and CURVE keys resolve as for :class:`sfbridge.Client`: arguments, then ``SFBRIDGE_*``,
    then defaults (no keys: NULL)."""

    def __init__(self, control: str | None = None, frames: str | None = None,
                 timeout: float = REQUEST_TIMEOUT_S, retries: int = REQUEST_RETRIES, *,
                 server_key: str | os.PathLike | None = None, client_key: str | os.PathLike | None = None) -> None:
        self.control_endpoint, self.frames_endpoint = client_endpoints(control, frames)
        self.keys = client_keys(server_key, client_key)
        self.timeout, self.retries = timeout, retries
        self.ctx = zmq.asyncio.Context.instance()
        self._ids = itertools.count(1)
        self._sock: zmq.asyncio.Socket | None = None

    def _socket(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            self._sock = self.ctx.socket(zmq.DEALER)
            self._sock.setsockopt(zmq.LINGER, 0)
            secure(self._sock, self.keys)
            self._sock.connect(self.control_endpoint)
        return self._sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    async def request(self, op: str, **args: Any) -> dict:
        rid = next(self._ids)
        body = request_body(op, rid, args)
        for _attempt in range(self.retries):
            sock = self._socket()
            await sock.send(body)
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
