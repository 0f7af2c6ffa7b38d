"""Control-plane fuzz: hostile, malformed and valid requests from concurrent REQ and DEALER peers.

Against a real ``sfbridge serve`` (testsrc, native pace) this sends ``--requests`` control requests
from ``--dealers`` pipelined DEALER peers (``--window`` in flight each) and ``--reqs`` lock-step REQ
peers: valid ops (ping, status, prompt, weighted and scheduled prompts, seed, cancel), garbage
bytes, truncated and deeply nested msgpack, non-map bodies, wrong types, invalid values, unknown
ops, oversize bodies (64 KiB..300 KiB: ``too_large``), multipart messages and empty bodies.
docs/PROTOCOL.md promises exactly one reply per request; the only requests allowed to go
unanswered are those the protocol says are dropped (larger than the socket's 1 MiB limit, sent
by a separate peer here). Meanwhile a well-behaved subscriber counts the frames it receives.

Prints one line: requests, lost / extra / mismatched / malformed replies, internal errors, crashes,
subscriber fps (mean and worst second), daemon RSS before and after. ``--json PATH`` keeps details.

Usage: python benchmarks/attack_control_fuzz.py [--requests 100000] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq
from attack_common import Serve, Watcher, settle_rss, write_json

from sfbridge.protocol import ERROR_CODES, MAX_SOCKET_MESSAGE_BYTES, PROTOCOL_VERSION

ANY = object()  # the reply's id is not checked (the body hides it)
Case = tuple[list[bytes], Any]  # (frames after the envelope, expected reply id)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("abcdefghij klmnopqrstuvwxyzé東🙂") for _ in range(n))


def valid_case(rng: random.Random, rid: int) -> dict:
    """A well-formed request; pause and reset are left out so the watcher's stream keeps running."""
    kind = rng.randrange(9)
    if kind == 0:
        return {"op": "ping", "id": rid}
    if kind == 1:
        return {"op": "status", "id": rid}
    if kind == 2:
        return {"op": "prompt", "id": rid, "text": text(rng, rng.randint(1, 80)),
                "transition": rng.choice(["cut", "blend"]), "blend_blocks": rng.randint(1, 64)}
    if kind == 3:
        n = rng.randint(2, 8)
        entries = [{"text": text(rng, 20), "weight": rng.random() + 0.01} for _ in range(n)]
        mix = "slerp" if n == 2 and rng.random() < 0.5 else "linear"
        return {"op": "prompt", "id": rid, "prompts": entries, "mix": mix, "interp": rng.choice(["linear", "slerp"])}
    if kind == 4:
        return {"op": "prompt", "id": rid, "text": "scheduled", "at_block": rng.randint(10_000, 2**31 - 1)}
    if kind == 5:
        return {"op": "seed", "id": rid, "seed": rng.randint(0, 2**63 - 1)}
    if kind == 6:
        return {"op": "cancel", "id": rid, "state_id": rng.randint(0, 10**6)}
    if kind == 7:
        return {"op": "steps", "id": rid, "steps": [1000, 750, 500, 250]}  # not_supported on testsrc
    return {"op": "seed", "id": rid, "seed": 1, "at_pts": rng.uniform(1e4, 1e8)}


WRONG_TYPES = [None, True, 1.5, -1, 2**64 - 1, "x", b"\x00\xff", [], [1, [2]], {"a": 1}, float("nan")]
INVALID = [
    {"op": "prompt", "text": ""}, {"op": "prompt", "text": "x" * 4001},
    {"op": "prompt", "text": "a", "transition": "x"}, {"op": "prompt", "text": "a", "transition": ""},
    {"op": "prompt", "text": "a", "blend_blocks": 0}, {"op": "prompt", "prompts": []},
    {"op": "prompt", "prompts": [{"text": "a", "weight": -1}]},
    {"op": "prompt", "prompts": [{"text": "a", "weight": 0}]},
    {"op": "prompt", "text": "a", "mix": "slerp"}, {"op": "prompt", "text": "a", "at_block": -1},
    {"op": "prompt", "text": "a", "at_pts": float("inf")}, {"op": "seed", "seed": -1}, {"op": "seed", "seed": 2**63},
    {"op": "steps", "steps": [1, 2]}, {"op": "steps", "steps": []}, {"op": "reset", "prompt": ""},
    {"op": "reset", "seed": -5}, {"op": "cancel", "state_id": -1},
]


def hostile_case(rng: random.Random, rid: int) -> Case:
    """A malformed request and the id its reply must carry."""
    kind = rng.randrange(14)
    if kind == 0:  # random bytes
        return [rng.randbytes(rng.randint(1, 400))], ANY
    if kind == 1:  # truncated msgpack
        body = pack({"op": "prompt", "id": rid, "text": text(rng, 50)})
        return [body[:rng.randint(1, len(body) - 1)]], None
    if kind == 2:  # not a map
        return [pack(rng.choice([1, "ping", [1, 2, 3], None, 3.5, b"bin", [{"op": "ping"}]]))], None
    if kind == 3:  # no op / op of the wrong type
        body = {"id": rid} if rng.random() < 0.5 else {"id": rid, "op": rng.choice(WRONG_TYPES[:10])}
        return [pack(body)], rid
    if kind == 4:  # unknown op
        return [pack({"op": rng.choice(["bogus", "", "PING", "x" * 300, "status\x00", "__init__"]), "id": rid})], rid
    if kind == 5:  # id of the wrong type: error reply with a nil id
        return [pack({"op": "ping", "id": rng.choice([1.5, True, None, [1], {"a": 1}, b"id"])})], None
    if kind == 6:  # a field of the wrong type
        op, key = rng.choice([("prompt", "text"), ("prompt", "prompts"), ("prompt", "transition"), ("seed", "seed"),
                              ("steps", "steps"), ("prompt", "blend_blocks"), ("cancel", "state_id"),
                              ("prompt", "recache"), ("prompt", "at_block"), ("reset", "seed")])
        # No None and no `reset` prompt: the daemon reads a nil optional field as absent, and any str is a
        # prompt, so both could make a valid `reset`, and a reset flood stops the stream by design.
        value = rng.choice([v for v in WRONG_TYPES[1:] if op != "reset" or not isinstance(v, int)])
        body = {"op": op, "id": rid, "text": "a", key: value}
        return [pack(body)], rid
    if kind == 7:  # right type, unacceptable value
        return [pack({**rng.choice(INVALID), "id": rid})], rid
    if kind == 8:  # too large for a request, small enough for the socket: too_large with the id
        size = rng.randint(65_537, 300_000)
        return [pack({"op": "prompt", "id": rid, "text": "x" * size})], rid
    if kind == 9:  # multipart
        parts = [pack({"op": "ping", "id": rid})] * rng.randint(2, 4)
        return parts, ANY
    if kind == 10:  # empty body, lone empty frame
        return [b""], None
    if kind == 11:  # deep nesting
        depth = rng.randint(100, 5000)
        return [b"\x91" * depth + b"\xc0"], None
    if kind == 12:  # huge declared lengths with no data behind them
        return [rng.choice([b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
                            b"\xc6\xff\xff\xff\xff", b"\x81\xa2op\xdb\x7f\xff\xff\xff"])], None
    # extra unknown keys on a valid request: ignored, ok reply
    return [pack({"op": "ping", "id": rid, **{f"k{i}": i for i in range(rng.randint(1, 50))}})], rid


def make_case(rng: random.Random, rid: int, hostile_share: float) -> Case:
    if rng.random() < hostile_share:
        return hostile_case(rng, rid)
    return [pack(valid_case(rng, rid))], rid


@dataclass
class Tally:
    sent: int = 0
    replies: int = 0
    lost: int = 0
    extra: int = 0
    mismatched: int = 0
    malformed: int = 0
    codes: collections.Counter = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, raw: bytes, expected: Any) -> None:
        try:
            reply = msgpack.unpackb(raw, strict_map_key=False)
        except Exception:
            reply = None
        ok = (isinstance(reply, dict) and isinstance(reply.get("ok"), bool) and reply.get("v") == PROTOCOL_VERSION
              and (reply["ok"] or (reply.get("error") or {}).get("code") in ERROR_CODES))
        with self.lock:
            self.replies += 1
            if not ok:
                self.malformed += 1
                return
            self.codes["ok" if reply["ok"] else reply["error"]["code"]] += 1
            if expected is not ANY and reply.get("id") != expected:
                self.mismatched += 1


def dealer_peer(endpoint: str, quota: int, window: int, seed: int, hostile: float, tally: Tally,
                drain_s: float) -> None:
    """Pipelines up to ``window`` requests; replies come back in order, so each one answers the oldest."""
    rng = random.Random(seed)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    pending: collections.deque = collections.deque()
    sent, last_progress = 0, time.monotonic()
    try:
        while sent < quota or pending:
            while sent < quota and len(pending) < window:
                frames, expected = make_case(rng, seed * 10_000_000 + sent, hostile)
                sock.send_multipart(frames)
                pending.append(expected)
                sent += 1
            if sock.poll(100, zmq.POLLIN):
                while True:
                    try:
                        raw = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if not pending:
                        with tally.lock:
                            tally.extra += 1
                        continue
                    tally.check(raw, pending.popleft())
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > drain_s:
                break  # whatever is still pending is lost
    finally:
        with tally.lock:
            tally.sent += sent
            tally.lost += len(pending)
        sock.close(0)


def req_peer(endpoint: str, quota: int, seed: int, hostile: float, tally: Tally, timeout_s: float) -> None:
    """Lock-step: one request, one reply; a timeout counts as lost and the REQ socket is replaced."""
    rng = random.Random(seed)
    ctx = zmq.Context.instance()

    def fresh() -> zmq.Socket:
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        return s

    sock, lost = fresh(), 0
    for i in range(quota):
        frames, expected = make_case(rng, seed * 10_000_000 + i, hostile)
        sock.send_multipart(frames)
        if sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            tally.check(sock.recv(), expected)
        else:
            lost += 1
            sock.close(0)
            sock = fresh()
    sock.close(0)
    with tally.lock:
        tally.sent += quota
        tally.lost += lost


def socket_limit_peer(endpoint: str, count: int, answered: list[int]) -> None:
    """Bodies past the socket's 1 MiB limit: the protocol says the connection is dropped, no reply."""
    ctx = zmq.Context.instance()
    for i in range(count):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        s.send(pack({"op": "ping", "id": i, "pad": b"\0" * (MAX_SOCKET_MESSAGE_BYTES + 1024)}))
        if s.poll(300, zmq.POLLIN):
            answered.append(i)
        s.close(0)


def run(a: argparse.Namespace) -> dict[str, Any]:
    serve = Serve("--model", "testsrc", "--width", str(a.width), "--height", str(a.height), log_level="info")
    watcher = Watcher(serve.frames, serve.pid)
    try:
        time.sleep(a.warmup)
        base_fps = watcher.fps(time.monotonic() - a.warmup / 2, time.monotonic())  # no attack yet
        rss_before, log_before = serve.rss_mb(), serve.log_bytes()
        tally, answered_big = Tally(), []
        peers = a.dealers + a.reqs
        per = a.requests // peers
        threads = [threading.Thread(target=dealer_peer, args=(serve.control, per, a.window, 1 + k, a.hostile,
                                                              tally, 10.0)) for k in range(a.dealers)]
        threads += [threading.Thread(target=req_peer, args=(serve.control, per, 100 + k, a.hostile, tally, 10.0))
                    for k in range(a.reqs)]
        threads.append(threading.Thread(target=socket_limit_peer, args=(serve.control, a.oversize, answered_big)))
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t1 = time.monotonic()
        alive_after = serve.alive()
        rss_after = settle_rss(serve, a.settle) if alive_after else 0.0
        try:
            serve.request("ping")
            responsive = True
        except Exception:
            responsive = False
        result = {
            "requests": tally.sent, "peers": {"dealer": a.dealers, "req": a.reqs, "window": a.window},
            "seconds": round(t1 - t0, 1), "rate_per_s": round(tally.sent / (t1 - t0)),
            "replies": tally.replies, "lost": tally.lost, "extra": tally.extra, "mismatched_id": tally.mismatched,
            "malformed_replies": tally.malformed, "codes": dict(tally.codes),
            "internal": tally.codes.get("internal", 0),
            "oversize_dropped": a.oversize - len(answered_big), "oversize_answered": len(answered_big),
            "crashes": int(not alive_after) + serve.tracebacks(), "responsive_after": responsive,
            "fps_before": round(base_fps, 1), "fps_mean": round(watcher.fps(t0, t1), 1),
            "fps_min_1s": round(watcher.min_fps_1s(t0, t1), 1),
            "max_gap_s": round(watcher.max_gap(t0, t1), 2),
            "rss_before_mb": round(rss_before, 1), "rss_peak_mb": round(watcher.peak("VmRSS", t0, t1) / 1024, 1),
            "rss_after_mb": round(rss_after, 1), "log_mb": round((serve.log_bytes() - log_before) / 2**20, 1),
        }
    finally:
        watcher.stop()
        serve.stop()
    return result


def summary(r: dict[str, Any]) -> str:
    big = r["oversize_dropped"] + r["oversize_answered"]
    return (f"control fuzz: {r['requests']} requests ({r['peers']['dealer']} DEALER x{r['peers']['window']} + "
            f"{r['peers']['req']} REQ, {r['rate_per_s']}/s): lost {r['lost']} extra {r['extra']} "
            f"mismatched {r['mismatched_id']} malformed {r['malformed_replies']} internal {r['internal']} "
            f"crashes {r['crashes']}; >1MiB dropped {r['oversize_dropped']}/{big}; frames {r['fps_mean']} fps "
            f"(before {r['fps_before']}, worst 1 s {r['fps_min_1s']}, gap {r['max_gap_s']} s); "
            f"RSS {r['rss_before_mb']} -> peak {r['rss_peak_mb']} -> {r['rss_after_mb']} MB; log +{r['log_mb']} MB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--dealers", type=int, default=6)
    ap.add_argument("--reqs", type=int, default=2)
    ap.add_argument("--window", type=int, default=64, help="requests in flight per DEALER peer")
    ap.add_argument("--hostile", type=float, default=0.7, help="share of malformed requests")
    ap.add_argument("--oversize", type=int, default=20, help="requests past the 1 MiB socket limit (no reply)")
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--warmup", type=float, default=4.0, help="seconds before the attack (fps before)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds of quiet before the RSS after")
    ap.add_argument("--quick", action="store_true", help="a bounded run for the test suite (a few seconds)")
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args(argv)
    if a.quick:
        a.requests, a.dealers, a.reqs, a.oversize = 6000, 3, 1, 3
        a.width, a.height, a.warmup, a.settle = 320, 192, 2.0, 1.0
    r = run(a)
    print(summary(r), flush=True)
    write_json(a.json, r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
