"""Who subscribes to what on the frames socket: per-connection topic sets, validated, O(1) per message.

Why: under XPUB_VERBOSER every (un)subscribe message reaches the publisher. Rebuilding the whole map per
message made a 20,000-topic flood quadratic (frames stopped for 20 s); counting messages instead of
connections left ghosts (a socket that subscribed 1,000 times and left counted 999 forever, because libzmq
keeps one subscription per connection and topic). So each connection (keyed by its fd, see transport.py)
holds a set of topics; a topic counts once per connection; a connection's topics go when it does.
With XPUB_MANUAL libzmq applies only what ``on_message`` applies: invalid or surplus topics are never
forwarded, so they cost the daemon nothing and match nothing.

Rare and harmless race: a subscription still queued from a connection that has ended, read after its fd
was reused by a new connection, is booked to the new one (until it leaves). Refusals are not counted on
a reused fd for a second after an abuse close, so that case never closes an innocent connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import zmq

from sfbridge import transport
from sfbridge.protocol import EVENT_TOPIC, FRAME_FORMATS
from sfbridge.transport import Peer, PeerTable, frame_fd

log = logging.getLogger("sfbridge.io.publisher")

TOPICS = (*FRAME_FORMATS, EVENT_TOPIC)
RAW_TOPIC = b"rgb24"
MAX_TOPICS_PER_PEER = 8  # valid topics are prefixes of jpeg/rgb24/event: a client needs 1 to 3
MAX_REFUSED_PER_PEER = 32  # refused subscriptions before the connection is closed
MESSAGES_PER_TURN = 256  # subscription messages handled per publisher loop turn; the rest wait
RESEND_MIN_S = 0.1  # a topic's last-value re-send at most this often (subscribe/unsubscribe churn)


def valid_topic(topic: bytes) -> bool:
    """Topics are prefixes of a topic the daemon publishes (``""`` is everything): nothing else can match."""
    return any(t.encode().startswith(topic) for t in TOPICS)


class Subscriptions:
    def __init__(self, sock: zmq.Socket, on_new_topic: Callable[[bytes], None]) -> None:
        self.sock = sock
        self.on_new_topic = on_new_topic
        self.counts: dict[bytes, int] = {}  # topic -> connections subscribed to it
        self.subscribers: dict[str, int] = {}  # the same for stats; replaced, never mutated
        self.raw_peers = 0  # connections subscribed to a prefix of rgb24 (raw frames are big)
        self.refused = 0
        self._quarantine: dict[int, float] = {}  # fd -> until: closed for abuse, refusals not counted
        self._new: dict[bytes, float] = {}  # topics to re-send the last value for -> not before
        self._last_resend: dict[bytes, float] = {}
        self.peers = PeerTable(sock, "frames", transport.max_peers(), transport.STREAM_IDLE_S,
                               on_gone=self._forget, is_idle=self._is_idle, evictable=lambda p: not p.topics)

    # --- per message -------------------------------------------------------------------------------

    def read_batch(self) -> bool:
        """Handle up to MESSAGES_PER_TURN waiting messages; True if any count changed."""
        self.peers.poll_events()
        changed = False
        for _ in range(MESSAGES_PER_TURN):
            try:
                frame = self.sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            changed |= self.on_message(frame)
        self.peers.sweep()
        if changed:
            self.subscribers = {t.decode(): c for t, c in self.counts.items()}  # at most 15 valid topics
            log.debug("subscriptions now %s", self.subscribers)
        self._resend_due()
        return changed

    def on_message(self, frame: zmq.Frame) -> bool:
        msg = frame.bytes
        if not msg or msg[0] not in (0, 1):
            return False
        fd = frame_fd(frame)
        peer = self.peers.get(fd)
        if peer is None and fd is not None:
            self.peers.poll_events()  # its ACCEPTED event may be queued behind the last look
            peer = self.peers.get(fd)
        if peer is None:  # libzmq's own unsubscriptions for a closed connection (_forget did it) or stale
            log.debug("subscription message from fd %s, not a live connection: ignored", fd)
            return False
        topic, now = msg[1:], time.monotonic()
        peer.last_active = now
        if msg[0] == 0:
            if topic not in peer.topics:
                return False
            self.sock.setsockopt(zmq.UNSUBSCRIBE, topic)  # XPUB_MANUAL: to the connection just read
            self._remove(peer, topic)
            return True
        if topic in peer.topics:
            return False  # a duplicate changes nothing, in libzmq either
        reason = self._refusal(peer, topic)
        if reason:
            self._refuse(peer, topic, reason, now)
            return False
        self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        peer.topics.add(topic)
        self.counts[topic] = self.counts.get(topic, 0) + 1
        if RAW_TOPIC.startswith(topic) and sum(RAW_TOPIC.startswith(t) for t in peer.topics) == 1:
            self.raw_peers += 1
        self._new.setdefault(topic, now)
        return True

    def _refusal(self, peer: Peer, topic: bytes) -> str:
        if not valid_topic(topic):
            return "not a prefix of jpeg, rgb24 or event"
        if len(peer.topics) >= MAX_TOPICS_PER_PEER:
            return f"more than {MAX_TOPICS_PER_PEER} topics on one connection"
        if (RAW_TOPIC.startswith(topic) and self.raw_peers >= transport.MAX_RAW_SUBSCRIBERS
                and not any(RAW_TOPIC.startswith(t) for t in peer.topics)):
            return f"{transport.MAX_RAW_SUBSCRIBERS} connections already receive rgb24"
        return ""

    def _refuse(self, peer: Peer, topic: bytes, reason: str, now: float) -> None:
        if self._quarantine.get(peer.fd, 0.0) > now:
            return  # most likely queued by the connection closed for abuse on this fd (module docstring)
        self.refused += 1
        peer.refused += 1
        if peer.refused <= 3:
            log.info("subscription refused (%s): %s", reason, transport.truncate(repr(topic), 40))
        if peer.refused > MAX_REFUSED_PER_PEER:
            log.warning("frames: closing a connection after %d refused subscriptions", peer.refused)
            self._quarantine = {fd: t for fd, t in self._quarantine.items() if t > now}
            self._quarantine[peer.fd] = now + 1.0
            self.peers.close(peer.fd)

    def _remove(self, peer: Peer, topic: bytes) -> None:
        peer.topics.discard(topic)
        if RAW_TOPIC.startswith(topic) and not any(RAW_TOPIC.startswith(t) for t in peer.topics):
            self.raw_peers -= 1
        left = self.counts.get(topic, 0) - 1
        if left > 0:
            self.counts[topic] = left
        else:
            self.counts.pop(topic, None)

    def _forget(self, peer: Peer) -> None:
        """A connection ended: libzmq dropped its subscriptions, drop them from the counts too."""
        for topic in list(peer.topics):
            self._remove(peer, topic)
        self.subscribers = {t.decode(): c for t, c in self.counts.items()}

    @staticmethod
    def _is_idle(peer: Peer, now: float) -> bool:
        return not peer.topics and now - peer.last_active > transport.STREAM_IDLE_S

    # --- late joiners ------------------------------------------------------------------------------

    def _resend_due(self) -> None:
        now = time.monotonic()
        for topic in list(self._new):
            if now - self._last_resend.get(topic, -1.0) >= RESEND_MIN_S:
                del self._new[topic]
                self._last_resend[topic] = now
                if topic in self.counts:
                    self.on_new_topic(topic)

    def counters(self) -> dict:
        return {"stream_peers": len(self.peers.peers), "refused_topics": self.refused,
                "stream_peers_closed": self.peers.closed}

    def stop(self) -> None:
        self.peers.stop()
