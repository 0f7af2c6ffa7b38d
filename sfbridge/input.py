"""Input thread: owns the bound SUB socket that game frames arrive on (docs/PROTOCOL.md "Input frames").

Why a bound SUB with clients connecting PUB: a PUB never blocks the game's send call (it drops at its
HWM when the daemon is slow, busy or absent), any number of games, cameras or tools can connect, and
a sender needs no reply. Why this thread drains the socket itself: newest-wins must hold for
multipart messages, and ``ZMQ_CONFLATE`` breaks them (environment notes), so every poll reads all
that waits and the ring in :mod:`sfbridge.input_buffer` keeps the newest frames. The engine only
calls :meth:`InputServer.take` at a block boundary; it never touches the socket.

Costs are bounded before any decode: more than :data:`MAX_PER_S` messages in a second from one client
are dropped unread, frames are decoded at most once, and error events are rate-limited per client and
reason (:class:`ErrorLimiter`), so a flood neither slows the output nor grows memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

import zmq

from sfbridge.generators.base import InputBlock
from sfbridge.input_buffer import REASONS, BadInput, InputRing, check_payload, decode, parse_header, peek_client
from sfbridge.protocol import make_event

log = logging.getLogger("sfbridge.io.input")

RCVHWM = 4  # messages libzmq holds per sender before the daemon's drain: the newest few only
MAX_MESSAGE_BYTES = 64 << 20  # ZMQ_MAXMSGSIZE: a 4096x4096 rgb24 frame (48 MiB) fits; libzmq drops bigger senders
MAX_PER_S = 64  # messages per second per client; more are dropped (reason "rate")
ERROR_PERIOD_S = 1.0  # at most one `bad_input` event per client and reason per period
MAX_CLIENTS = 256  # clients tracked (rate windows, stats); the least recently seen are forgotten
POLL_MS = 50
MAX_DECODES_PER_DRAIN = 4  # newest clients' frames decoded per drain: random client ids cannot buy decodes

Emit = Callable[[dict], None]


class ErrorLimiter:
    """One ``bad_input`` event per (client, reason) per period; the next one counts those suppressed."""

    def __init__(self, emit: Emit, period_s: float = ERROR_PERIOD_S) -> None:
        self.emit, self.period_s = emit, period_s
        self._last: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()  # -> (t sent, suppressed)
        self.sent = 0
        self.suppressed = 0

    def report(self, err: BadInput, now: float) -> None:
        key = (err.client, err.reason)
        sent_at, held = self._last.pop(key, (-1e9, 0))
        if now - sent_at < self.period_s:
            self._last[key] = (sent_at, held + 1)
            self.suppressed += 1
            return
        self._last[key] = (now, 0)
        while len(self._last) > 4 * MAX_CLIENTS:
            self._last.popitem(last=False)
        self.sent += 1
        self.emit(make_event("error", code="bad_input", client=err.client, seq=err.seq, reason=err.reason,
                             message=err.message, suppressed=held))


class ClientStats:
    """What `status` shows per sender; ``times`` is the rate window (arrivals of the last second)."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.received = 0
        self.accepted = 0
        self.dropped: dict[str, int] = {}
        self.last_seq: int | None = None
        self.last_t_cap: float | None = None
        self.last_arrival = 0.0

    def snapshot(self, now: float) -> dict:
        return {"received": self.received, "accepted": self.accepted, "dropped": dict(self.dropped),
                "last_seq": self.last_seq, "last_t_cap": self.last_t_cap,
                "age_s": round(now - self.last_arrival, 3), "rate": len([t for t in self.times if now - t <= 1.0])}


class InputServer:
    """The input socket and its thread; ``take`` hands the engine one block of input frames."""

    def __init__(self, ctx: zmq.Context, endpoint: str, width: int, height: int, emit: Emit,
                 bind: Callable[[zmq.Socket, str], str] | None = None, ring: InputRing | None = None,
                 max_per_s: int = MAX_PER_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.width, self.height = width, height
        self.ring = ring or InputRing()
        self.max_per_s = max_per_s
        self.clock = clock
        self.errors = ErrorLimiter(emit)
        self.clients: OrderedDict[str, ClientStats] = OrderedDict()
        self._lock = threading.Lock()  # clients: the input thread writes, `status` reads
        self.stop_event = threading.Event()
        self.decode_ms = 0.0  # last accepted frame's decode + resize time
        self.failure: BaseException | None = None  # what killed the thread, if it died
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, RCVHWM)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        if bind is not None:
            self.endpoint = bind(self.sock, endpoint)
        else:
            self.sock.bind(endpoint)
            self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.thread = threading.Thread(target=self._run_safe, name="sfbridge-input", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def take(self, n: int) -> InputBlock | None:
        """The next block's ``n`` input frames (engine thread); None: no input (text-only fallback)."""
        return self.ring.take(n, self.clock())

    # --- input thread ------------------------------------------------------------------------------

    def _run_safe(self) -> None:
        try:
            while not self.stop_event.is_set():
                if self.sock.poll(POLL_MS, zmq.POLLIN):
                    self._drain()
        except Exception as exc:  # last line of defence: the daemon's watch (daemon.py) reports it and exits
            self.failure = exc
            log.exception("input thread died")
        finally:
            self.sock.close(linger=0)

    def _drain(self) -> None:
        """Everything waiting: rate, header and payload checks on each, decode only the newest valid one per client."""
        newest: dict[str, tuple] = {}
        while True:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            now = self.clock()
            try:
                header, payload = self._admit(parts, now)
            except BadInput as err:
                self._drop(err, now)
                continue
            if header.client in newest:  # superseded by a newer frame of the same drain: never decoded
                self._count(header.client, "accepted")
            newest[header.client] = (header, payload, now)
        ordered = sorted(newest.values(), key=lambda item: item[2])
        for header, _, _ in ordered[:-MAX_DECODES_PER_DRAIN]:
            self._count(header.client, "accepted")
        for header, payload, arrived in ordered[-MAX_DECODES_PER_DRAIN:]:
            t0 = time.perf_counter()
            try:
                frame = decode(header, payload, self.width, self.height)
            except BadInput as err:
                self._drop(err, self.clock())
                continue
            self.decode_ms = 1e3 * (time.perf_counter() - t0)
            self.ring.put(arrived, frame, (header.client, header.seq, header.t_cap))
            with self._lock:
                st = self.clients.get(header.client)
                if st is not None:
                    st.accepted += 1
                    st.last_seq, st.last_t_cap = header.seq, header.t_cap

    def _admit(self, parts: list, now: float) -> tuple:
        """Message shape, per-client rate, header, payload size: everything that needs no decode."""
        if len(parts) != 2:
            client, seq = peek_client(parts[0].bytes) if parts else ("?", None)
            raise BadInput("bad_message", f"an input message is [header, payload], got {len(parts)} frame(s)",
                           client, seq)
        client, seq = peek_client(parts[0].bytes)
        st = self._client(client, now)
        while st.times and now - st.times[0] > 1.0:
            st.times.popleft()
        if len(st.times) >= self.max_per_s:
            raise BadInput("rate", f"more than {self.max_per_s} messages per second from client {client!r}",
                           client, seq)
        st.times.append(now)
        header = parse_header(parts[0].bytes)
        check_payload(header, parts[1].buffer)
        return header, parts[1].buffer

    def _client(self, client: str, now: float) -> ClientStats:
        with self._lock:
            st = self.clients.pop(client, None) or ClientStats()
            self.clients[client] = st  # most recently seen last
            while len(self.clients) > MAX_CLIENTS:
                self.clients.popitem(last=False)
            st.received += 1
            st.last_arrival = now
            return st

    def _count(self, client: str, what: str) -> None:
        with self._lock:
            st = self.clients.get(client)
            if st is not None and what == "accepted":
                st.accepted += 1

    def _drop(self, err: BadInput, now: float) -> None:
        with self._lock:
            st = self.clients.get(err.client)
            if st is None:  # a message too broken to count (no client id) counts under "?"
                st = self.clients.setdefault(err.client, ClientStats())
                st.received += 1
            st.dropped[err.reason] = st.dropped.get(err.reason, 0) + 1
        log.debug("input from %r dropped (%s): %s", err.client, err.reason, err.message)
        self.errors.report(err, now)

    def snapshot(self) -> dict:
        """The `status` map of the input side (any thread)."""
        now = self.clock()
        with self._lock:
            clients = {c: st.snapshot(now) for c, st in self.clients.items()}
        return {"endpoint": self.endpoint, "clients": clients, "decode_ms": round(self.decode_ms, 3),
                "held_blocks": self.ring.held_blocks, "fallback_blocks": self.ring.fallback_blocks,
                "errors_sent": self.errors.sent, "errors_suppressed": self.errors.suppressed,
                "reasons": list(REASONS)}
