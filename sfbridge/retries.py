"""Retried requests apply once: the control thread remembers recent replies by (peer, request id).

Why: a Lazy Pirate client (docs/PROTOCOL.md 2.1) that gets no reply in time sends the same request
again. When the daemon was only slow, not gone, both copies arrive, and a prompt used to apply twice
(two state_ids, two `applied` events; issue 11). Here the second copy is recognised: same peer
routing id, same ``id``, same body, within RETRY_WINDOW_S of the first. It is not handled again; it
gets the first reply, byte for byte.

What is remembered, and what it costs (the window and the caps bound memory whatever peers send):
- only requests that change something and carry an ``id``: ``ping`` and ``status`` are reads, a
  retry simply reads again;
- only replies up to MAX_REPLY_BYTES (a steering reply is ~100 bytes);
- at most MAX_PER_PEER replies per peer and MAX_REMEMBERED in all, the oldest dropped first.
The same id with a different body is a new request (a client that reuses ids), handled normally.

Peers that reconnect (the Python client opens a new socket per retry) keep their routing id: they set
ZMQ_ROUTING_ID, and the ROUTER hands the id over to the new connection (ROUTER_HANDOVER). libzmq then
renames the old connection to a generated id (a leading zero byte); copies still queued on it are
matched by (id, body) against the chosen-id peers' replies, so they too apply once.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from sfbridge.protocol import MAX_REQUEST_BYTES

log = logging.getLogger("sfbridge.io.retries")

RETRY_WINDOW_S = 10.0  # a retry later than this is a new request (the Python client gives up after ~6 s)
MAX_PER_PEER = 32
MAX_REMEMBERED = 8192  # ~1.3 MB at most
MAX_REPLY_BYTES = 1024
READ_OPS = ("ping", "status")


@dataclass(frozen=True)
class _Kept:
    expires: float  # monotonic
    digest: bytes  # of the request body: the same id with another body is another request
    reply: bytes


def _request_key(body: bytes) -> Any:
    """The id of a request worth remembering, else None (no id, a read, or not a request at all)."""
    if len(body) > MAX_REQUEST_BYTES:
        return None
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception:  # the handler replies bad_msgpack; nothing to remember
        return None
    if not isinstance(msg, dict) or msg.get("op") in READ_OPS:
        return None
    rid = msg.get("id")
    return rid if isinstance(rid, (int, str)) and not isinstance(rid, bool) else None


class ReplyCache:
    """Replies of the last RETRY_WINDOW_S by (peer routing id, request id). Control thread only."""

    def __init__(self, window_s: float = RETRY_WINDOW_S, max_per_peer: int = MAX_PER_PEER,
                 max_total: int = MAX_REMEMBERED) -> None:
        self.window_s, self.max_per_peer, self.max_total = window_s, max_per_peer, max_total
        self._kept: OrderedDict[tuple[bytes, Any], _Kept] = OrderedDict()  # oldest first
        self._per_peer: dict[bytes, OrderedDict[Any, None]] = {}
        self._by_body: dict[tuple[Any, bytes], tuple[bytes, Any]] = {}  # (id, digest) -> key; chosen ids only
        self.retries_answered = 0  # requests recognised as retries (shown in `stats` by the caller if wanted)

    def __len__(self) -> int:
        return len(self._kept)

    def answer(self, peer: bytes, body: bytes, handle: Callable[[bytes], bytes]) -> bytes:
        """The reply to ``body`` from ``peer``: the remembered one for a retry, else ``handle(body)``."""
        now = time.monotonic()
        self._expire(now)
        rid = _request_key(body)
        if rid is None:
            return handle(body)
        key = (peer, rid)
        digest = hashlib.blake2b(body, digest_size=16).digest()
        kept = self._kept.get(key)
        if kept is None and peer[:1] == b"\0":  # maybe a copy on a connection a reconnect took over
            kept = self._kept.get(self._by_body.get((rid, digest), key))
        if kept is not None and kept.digest == digest:
            self.retries_answered += 1
            log.debug("request id %.40r retried by the same peer: its first reply again", rid)
            return kept.reply
        reply = handle(body)
        if len(reply) <= MAX_REPLY_BYTES:
            self._remember(key, _Kept(now + self.window_s, digest, reply))
        return reply

    def _remember(self, key: tuple[bytes, Any], kept: _Kept) -> None:
        self._forget(key)
        self._kept[key] = kept
        if key[0][:1] != b"\0":
            self._by_body[(key[1], kept.digest)] = key
        mine = self._per_peer.setdefault(key[0], OrderedDict())
        mine[key[1]] = None
        if len(mine) > self.max_per_peer:
            self._forget((key[0], next(iter(mine))))
        while len(self._kept) > self.max_total:
            self._forget(next(iter(self._kept)))

    def _forget(self, key: tuple[bytes, Any]) -> None:
        kept = self._kept.pop(key, None)
        if kept is None:
            return
        if self._by_body.get((key[1], kept.digest)) == key:
            del self._by_body[(key[1], kept.digest)]
        mine = self._per_peer[key[0]]
        del mine[key[1]]
        if not mine:
            del self._per_peer[key[0]]

    def _expire(self, now: float) -> None:
        while self._kept:
            key, kept = next(iter(self._kept.items()))
            if kept.expires > now:
                return
            self._forget(key)
