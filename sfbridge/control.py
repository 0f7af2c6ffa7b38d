"""Control thread: owns the ROUTER socket; one reply per request, whatever arrives.

Why ROUTER: many clients (a game, a viewer, a CLI) talk to one daemon at once, and ROUTER lets
each use DEALER (async, any number in flight) or REQ (lock-step). The envelope is mirrored:
a REQ client's empty delimiter frame is sent back, a DEALER client gets just the body.
Validation happens here (``protocol.decode_request``), the handler only sees typed requests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from sfbridge import transport
from sfbridge.protocol import (
    MAX_SOCKET_MESSAGE_BYTES,
    ProtocolError,
    Request,
    decode_request,
    error_reply,
    ok_reply,
)
from sfbridge.retries import ReplyCache
from sfbridge.security import ServerAccess

log = logging.getLogger("sfbridge.io.control")

Handler = Callable[[Request], dict]


class ControlServer:
    def __init__(self, ctx: zmq.Context, endpoint: str, handler: Handler, access: ServerAccess | None = None) -> None:
        self.handler = handler
        self.stop_event = threading.Event()
        self.requests = 0
        self.errors = 0
        self.retries = ReplyCache()  # a retried request gets its first reply, is not applied twice
        self.replies_dropped = 0  # the peer's queue was full (it does not read) or it had gone
        self.refusals = transport.RefusalLog(log)
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a client reconnecting with its routing id takes it over
        self.sock.setsockopt(zmq.SNDHWM, 1000)
        # Mandatory: a reply that cannot be queued raises instead of vanishing, so it is counted.
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        transport.harden(self.sock, MAX_SOCKET_MESSAGE_BYTES)
        self.peers = transport.PeerTable(self.sock, "control", transport.max_peers(), transport.CONTROL_IDLE_S,
                                         is_idle=_control_idle)
        self.endpoint = (access or ServerAccess()).bind(self.sock, endpoint)  # CURVE when on, ipc file 0600
        self.thread = threading.Thread(target=self._run_safe, name="sfbridge-control", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def _run_safe(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.peers.monitor, zmq.POLLIN)
        try:
            while not self.stop_event.is_set():
                ready = dict(poller.poll(100))
                self.peers.poll_events()
                if self.sock in ready:
                    for _ in range(64):  # then look at connection events and idle peers again
                        got = self._recv_request()
                        if got is None:
                            break
                        self._serve_one(*got)
                self.peers.sweep()
        except Exception as exc:  # the daemon's watch (daemon.py) reports it and exits non-zero
            self.failure = exc
            log.exception("control thread died")
        finally:
            self.peers.stop()
            self.sock.close(linger=0)

    def _recv_request(self) -> tuple[list[bytes], int] | None:
        """One message, read part by part: parts past CONTROL_MAX_PARTS are counted, never kept (a 200-part
        message of 1 MiB parts used to be copied whole), so ``_serve_one`` refuses it by its part count."""
        try:
            first = self.sock.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        peer = self.peers.get(transport.frame_fd(first))
        if peer is not None:
            peer.last_active = time.monotonic()
        frames, parts = [first.bytes], 1
        while self.sock.getsockopt(zmq.RCVMORE):
            part = self.sock.recv(copy=False)
            parts += 1
            if parts <= transport.CONTROL_MAX_PARTS:
                frames.append(part.bytes)
        return frames, parts

    def counters(self) -> dict:
        return {"control_peers": len(self.peers.peers), "control_peers_closed": self.peers.closed,
                "replies_dropped": self.replies_dropped}

    def _serve_one(self, frames: list[bytes], parts: int | None = None) -> None:
        """``frames``: the first CONTROL_MAX_PARTS parts of a message of ``parts`` parts."""
        identity, rest = frames[0], frames[1:]
        envelope = [identity]
        if len(rest) >= 2 and rest[0] == b"":  # REQ client: mirror the delimiter (a lone empty frame is a body)
            envelope.append(b"")
            rest = rest[1:]
        self.requests += 1
        body_frames = len(rest) + (parts or len(frames)) - len(frames)
        if body_frames != 1:
            reply = error_reply(None, "bad_request",
                                f"a request is exactly one frame after the envelope, got {body_frames}")
        else:
            reply = self.retries.answer(identity, rest[0], self.handle_body)
        try:
            self.sock.send_multipart([*envelope, reply], flags=zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError) as exc:  # EAGAIN: its queue is full; EHOSTUNREACH: it has gone
            self.replies_dropped += 1
            if self.replies_dropped & (self.replies_dropped - 1) == 0:  # 1st, 2nd, 4th, 8th...: not a flood
                log.warning("reply not delivered (%s): %d so far", exc.strerror, self.replies_dropped)

    def handle_body(self, body: bytes) -> bytes:
        rid: Any = None
        try:
            rid, request = decode_request(body)
            return ok_reply(rid, self.handler(request))
        except ProtocolError as err:
            self.errors += 1
            self.refusals.refused(err.code, err.message)
            # The handler's own refusals (not_supported, not_found, ...) carry no id: the decoded one is theirs.
            return error_reply(err.request_id if err.request_id is not None else rid, err.code, err.message)
        except Exception as exc:
            self.errors += 1
            log.exception("request handler failed")
            return error_reply(rid, "internal", f"{type(exc).__name__}: {exc}")


def _control_idle(peer: transport.Peer, now: float) -> bool:
    """Silent since it connected: closed after CONTROL_SILENT_S; after a request: after CONTROL_IDLE_S."""
    silent = peer.last_active == peer.since
    return now - peer.last_active > (transport.CONTROL_SILENT_S if silent else transport.CONTROL_IDLE_S)
