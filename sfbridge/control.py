"""Control thread: owns the ROUTER socket; one reply per request, whatever arrives.

Why ROUTER: many clients (a game, a viewer, a CLI) talk to one daemon at once, and ROUTER lets
each use DEALER (async, any number in flight) or REQ (lock-step). The envelope is mirrored:
a REQ client's empty delimiter frame is sent back, a DEALER client gets just the body.
Validation happens here (``protocol.decode_request``), the handler only sees typed requests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import zmq

from sfbridge.protocol import (
    MAX_SOCKET_MESSAGE_BYTES,
    ProtocolError,
    Request,
    decode_request,
    error_reply,
    ok_reply,
)
from sfbridge.security import ServerAccess

log = logging.getLogger("sfbridge.io.control")

Handler = Callable[[Request], dict]


class ControlServer:
    def __init__(self, ctx: zmq.Context, endpoint: str, handler: Handler, access: ServerAccess | None = None) -> None:
        self.handler = handler
        self.stop_event = threading.Event()
        self.requests = 0
        self.errors = 0
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_SOCKET_MESSAGE_BYTES)
        self.sock.setsockopt(zmq.SNDHWM, 1000)
        self.endpoint = (access or ServerAccess()).bind(self.sock, endpoint)  # CURVE when on, ipc file 0600
        self.thread = threading.Thread(target=self._run_safe, name="sfbridge-control", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def _run_safe(self) -> None:
        try:
            while not self.stop_event.is_set():
                if self.sock.poll(100, zmq.POLLIN):
                    self._serve_one(self.sock.recv_multipart(copy=True))
        except Exception as exc:  # the daemon's watch (daemon.py) reports it and exits non-zero
            self.failure = exc
            log.exception("control thread died")
        finally:
            self.sock.close(linger=0)

    def _serve_one(self, frames: list[bytes]) -> None:
        identity, rest = frames[0], frames[1:]
        envelope = [identity]
        if len(rest) >= 2 and rest[0] == b"":  # REQ client: mirror the delimiter (a lone empty frame is a body)
            envelope.append(b"")
            rest = rest[1:]
        self.requests += 1
        if len(rest) != 1:
            reply = error_reply(None, "bad_request",
                                f"a request is exactly one frame after the envelope, got {len(rest)}")
        else:
            reply = self.handle_body(rest[0])
        try:
            self.sock.send_multipart([*envelope, reply], flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("dropping a reply: client not reading")

    def handle_body(self, body: bytes) -> bytes:
        rid: Any = None
        try:
            rid, request = decode_request(body)
            return ok_reply(rid, self.handler(request))
        except ProtocolError as err:
            self.errors += 1
            log.info("request refused (%s): %s", err.code, err.message)
            # The handler's own refusals (not_supported, not_found, ...) carry no id: the decoded one is theirs.
            return error_reply(err.request_id if err.request_id is not None else rid, err.code, err.message)
        except Exception as exc:
            self.errors += 1
            log.exception("request handler failed")
            return error_reply(rid, "internal", f"{type(exc).__name__}: {exc}")
