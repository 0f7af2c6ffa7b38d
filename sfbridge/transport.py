"""Transport limits: socket options, per-connection bookkeeping and process limits for both daemon sockets.

Why a module of its own: one hostile or careless peer must not hurt the others (issue 11), and the
defences are the same on the ROUTER and the XPUB: a size limit on every inbound frame, a handshake
timeout, ZMTP heartbeats and TCP keepalive for dead peers, a cap on connections, and a way to close
one connection that libzmq does not offer for bound sockets (``PeerTable.kick``). docs/PROTOCOL.md
"Limits" states every number here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import logging
import os
import resource
import socket
import struct
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger("sfbridge.io.transport")

HANDSHAKE_MS = 5_000  # a connection must finish the ZMTP handshake within this (libzmq default: 30 s)
HEARTBEAT_IVL_MS = 5_000  # the daemon PINGs every peer this often ...
HEARTBEAT_TIMEOUT_MS = 15_000  # ... and closes one that sent nothing at all (not even PONG) for this long
TCP_KEEPALIVE_IDLE_S, TCP_KEEPALIVE_INTVL_S, TCP_KEEPALIVE_CNT = 60, 10, 3  # dead hosts: gone after ~90 s
MAX_PEERS = 1000  # connections per socket; lower when the open-file limit is low (max_peers)
MAX_RAW_SUBSCRIBERS = 16  # connections receiving rgb24 at once: each stalled one holds up to SNDHWM raw frames
STREAM_MAX_FRAME_BYTES = 1024  # inbound on the XPUB: subscriptions, READY and security commands
STREAM_IDLE_S = 10.0  # a stream connection with no valid subscription for this long is closed
CONTROL_IDLE_S = 300.0  # a control connection that sent no request for this long is closed
# A control connection that has sent nothing at all since it connected: garbage (random bytes, HTTP) that
# libzmq took for a ZMTP 1.0 peer, which no handshake timeout ends. Real clients send a request right after
# connecting; one that waits longer is closed and reconnects on its next request (libzmq does so by itself).
CONTROL_SILENT_S = 10.0
CONTROL_MAX_PARTS = 3  # routing id, REQ delimiter, body: a message with more parts is refused
LOG_REFUSED_PER_WINDOW, LOG_WINDOW_S, LOG_VALUE_CHARS = 10, 10.0, 160
FD_RESERVE = 64  # files the daemon itself needs (models, pipes, monitor sockets)


def max_peers() -> int:
    """Connections allowed per socket: MAX_PEERS, or what the open-file limit leaves for two sockets."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_PEERS
    return max(8, min(MAX_PEERS, (soft - FD_RESERVE) // 2))


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (the common 1024 lets ~1000 idle peers lock out all).

    Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("open-file limit raised from %d to %d", soft, hard)
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return soft


def return_freed_memory_to_os() -> None:
    """Fix glibc's mmap threshold at 128 KiB: big message buffers (a hostile 1 MiB multipart part, a
    raw frame) are then mapped and unmapped, so RSS falls back after an attack. glibc's default raises
    the threshold after the first such free, and later big buffers stay in the heap for good."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        m_mmap_threshold = -3
        libc.mallopt(m_mmap_threshold, 128 * 1024)
    except (OSError, AttributeError):  # not glibc
        pass


def prepare_process() -> None:
    """Once per daemon, before its sockets: open-file limit and memory return (both process-wide)."""
    raise_open_file_limit()
    return_freed_memory_to_os()


def harden(sock: zmq.Socket, max_frame_bytes: int) -> None:
    """Options every daemon socket gets before bind: see the constants above."""
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, TCP_KEEPALIVE_IDLE_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, TCP_KEEPALIVE_INTVL_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, TCP_KEEPALIVE_CNT)


def unsent_bytes(fd: int) -> int:
    """Bytes in a connection's kernel send queue that its peer has not acknowledged yet (Linux SIOCOUTQ,
    which is TIOCOUTQ). 0 where the kernel cannot say (a closed or non-TCP fd, another OS)."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return 0


def frame_fd(frame: zmq.Frame) -> int | None:
    """The file descriptor of the connection a received frame came from (libzmq's ``__fd`` property)."""
    try:
        return int(frame.get("__fd"))
    except (zmq.ZMQError, ValueError, TypeError):
        return None  # inproc, or an unsubscription libzmq made up for a closed connection


def kick(fd: int) -> None:
    """Close one connection of a bound socket: shut its TCP/IPC socket down under libzmq, which then sees
    the end of the stream and tears the connection down itself (no libzmq API does this in 4.3)."""
    try:
        dup = os.dup(fd)
    except OSError:
        return
    try:
        s = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        s.close()


@dataclass
class Peer:
    fd: int
    since: float
    last_active: float
    topics: set[bytes] = field(default_factory=set)
    refused: int = 0


class PeerTable:
    """Live connections of one socket, from its monitor's ACCEPTED/DISCONNECTED events, keyed by fd.

    Messages carry their connection's fd (``frame_fd``), so per-connection state (topics, activity) is
    an O(1) lookup. Past ``cap`` connections, the one quiet for longest among the ``evictable`` is
    closed (so idle connections cannot lock new clients out), else the newest. ``is_idle`` decides which
    quiet ones ``sweep`` closes. ``on_gone(peer)`` runs for every connection that ends.
    """

    def __init__(self, sock: zmq.Socket, name: str, cap: int, idle_s: float,
                 on_gone: Callable[[Peer], None] = lambda p: None,
                 is_idle: Callable[[Peer, float], bool] | None = None,
                 evictable: Callable[[Peer], bool] = lambda p: True) -> None:
        self.name, self.cap, self.idle_s, self.on_gone = name, cap, idle_s, on_gone
        self.is_idle = is_idle or (lambda p, now: now - p.last_active > self.idle_s)
        self.evictable = evictable
        self.peers: dict[int, Peer] = {}
        self.closed = 0  # connections the daemon closed (cap, idle, abuse)
        self.sock = sock
        self.monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._next_sweep = time.monotonic() + 1.0

    def poll_events(self) -> None:
        """Apply every monitor event waiting (call before reading the socket's messages)."""
        while True:
            try:
                msg = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = parse_monitor_message(msg)
            fd = int(event["value"])
            if event["event"] == zmq.EVENT_ACCEPTED:
                self._drop(fd)  # a record on this fd is a connection that has ended
                now = time.monotonic()
                self.peers[fd] = Peer(fd, now, now)
                if len(self.peers) > self.cap:
                    self._evict(fd)
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self._drop(fd)

    def _evict(self, newest: int) -> None:
        quiet = [p for p in self.peers.values() if p.fd != newest and self.evictable(p)]
        victim = min(quiet, key=lambda p: p.last_active).fd if quiet else newest
        log.warning("%s: over the cap of %d connections: closing %s", self.name, self.cap,
                    "the newest" if victim == newest else "the longest quiet one")
        self.close(victim)

    def get(self, fd: int | None) -> Peer | None:
        return self.peers.get(fd) if fd is not None else None

    def close(self, fd: int) -> None:
        """Close a connection now (its state goes when libzmq reports it disconnected)."""
        self.closed += 1
        kick(fd)
        self._drop(fd)

    def sweep(self) -> None:
        """Close idle connections; cheap to call often (runs once a second)."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for peer in [p for p in self.peers.values() if self.is_idle(p, now)]:
            log.info("%s: closing a connection idle for %.0f s", self.name, now - peer.last_active)
            self.close(peer.fd)

    def _drop(self, fd: int) -> None:
        peer = self.peers.pop(fd, None)
        if peer is not None:
            self.on_gone(peer)

    def stop(self) -> None:
        """Stop the monitor before closing its reader: libzmq crashed at shutdown when events (a peer
        reconnecting in a loop) still went to a closed monitor socket."""
        if not self.sock.closed:
            try:
                self.sock.disable_monitor()
            except zmq.ZMQError:
                pass
        self.monitor.close(linger=0)


class RefusalLog:
    """Log refused requests at most LOG_REFUSED_PER_WINDOW times per LOG_WINDOW_S, each value truncated,
    then one line saying how many were not logged (2,000 refusals echoing a 65 KB field wrote 130 MB)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.window_start = time.monotonic()
        self.logged = 0
        self.suppressed = 0

    def refused(self, code: str, message: str) -> None:
        now = time.monotonic()
        if now - self.window_start > LOG_WINDOW_S:
            if self.suppressed:
                self.logger.info("%d more refused requests were not logged", self.suppressed)
            self.window_start, self.logged, self.suppressed = now, 0, 0
        if self.logged >= LOG_REFUSED_PER_WINDOW:
            self.suppressed += 1
            return
        self.logged += 1
        self.logger.info("request refused (%s): %s", code, truncate(message))


def truncate(text: str, limit: int = LOG_VALUE_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"
