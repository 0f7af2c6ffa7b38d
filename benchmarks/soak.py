"""Soak: a long ``--pace off`` run with steering churn and subscribers coming and going.

``sfbridge serve --model testsrc --pace off`` generates ``--frames`` frames (counted by the frame
header ``seq``) while one steering peer keeps changing things: cut, blend and weighted prompts,
prompts and seeds scheduled a few blocks ahead (some cancelled), seeds, steps (``tiny``), pause and
resume, resets, status. Meanwhile short-lived subscribers join and leave (jpeg, rgb24, event, all).
Then the same, shorter, on ``tiny`` (the real model code on CPU).

Every change's promise is checked against what the stream shows (docs/PROTOCOL.md 2.2, 3.1, 3.2):
- every request gets exactly one reply (lost replies are counted);
- every accepted prompt/seed/steps ``state_id`` is announced exactly once (applied, superseded or
  cancelled), and a `reset`'s by a `started` event with its stream;
- ``applied``/``superseded`` carry ``block == applies_at_block``; every frame of that block carries
  the ``applied`` event's ``state``; an immediate change is not on screen in the block before.
Anything else is an ``applies_at_block`` violation. RSS and thread count are averaged over the first
and the last 10 % of the frames.

Prints one line; ``--json PATH`` keeps details.

Usage: python benchmarks/soak.py [--frames 100000] [--tiny-frames 3000] [--quick] [--json out.json]
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
from attack_common import Serve, proc_status, write_json

CTX = zmq.Context.instance()
SCHEDULED_KINDS = ("prompt", "seed", "steps")


@dataclass
class Stream:
    """What the observer saw: frame states per (stream, block) and the events, in order."""

    frames: dict[tuple[str, int], set[int]] = field(default_factory=lambda: collections.defaultdict(set))
    events: list[dict] = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int = -1
    last_block: int = 0
    frames_seen: int = 0
    stream_of_event: list[str] = field(default_factory=list)  # the scene each event belongs to


class Observer:
    """Two SUB sockets (frames and events apart, so a burst of frames never delays an event) on threads."""

    def __init__(self, endpoint: str) -> None:
        self.seen = Stream()
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.announced: collections.Counter = collections.Counter()
        self.threads = [threading.Thread(target=self._frames, args=(endpoint,), daemon=True),
                        threading.Thread(target=self._events, args=(endpoint,), daemon=True)]
        for t in self.threads:
            t.start()

    def _sub(self, endpoint: str, topic: bytes) -> zmq.Socket:
        s = CTX.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, 100_000)
        s.setsockopt(zmq.SUBSCRIBE, topic)
        s.connect(endpoint)
        return s

    def _frames(self, endpoint: str) -> None:
        s = self._sub(endpoint, b"jpeg")
        while not self.stop_event.is_set():
            if not s.poll(100, zmq.POLLIN):
                continue
            h = msgpack.unpackb(s.recv_multipart()[1])
            with self.lock:
                seen = self.seen
                seen.frames[(h["stream"], h["block"])].add(h["state"])
                if seen.first_seq is None:
                    seen.first_seq = h["seq"]
                seen.last_seq = max(seen.last_seq, h["seq"])
                seen.last_block = h["block"]
                seen.frames_seen += 1
        s.close(0)

    def _events(self, endpoint: str) -> None:
        s = self._sub(endpoint, b"event")
        stream = ""
        while not self.stop_event.is_set():
            if not s.poll(100, zmq.POLLIN):
                continue
            ev = msgpack.unpackb(s.recv_multipart()[1])
            # A scene's events belong to the stream of the `started` before them. A `state` event (sent to
            # every event subscriber when one joins) names the stream the daemon set up last, which a
            # reset has already changed while the old scene's blocks and events still come: only the
            # first one counts, for the scene that was running when the observer joined.
            if ev.get("type") == "started" or (ev.get("type") == "state" and not stream):
                stream = ev["stream"]
            if ev.get("type") in ("applied", "superseded", "cancelled", "started"):
                with self.lock:
                    self.seen.events.append(ev)
                    self.seen.stream_of_event.append(stream)
                    if ev["type"] != "started":
                        self.announced[ev["state_id"]] += 1
        s.close(0)

    def generated(self) -> int:
        with self.lock:
            return 0 if self.seen.first_seq is None else self.seen.last_seq - self.seen.first_seq

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(5)


@dataclass
class Churn:
    """One steering peer: lock-step requests, each with a 5 s timeout (a timeout is a lost reply)."""

    control: str
    model: str
    observer: Observer
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    requests: int = 0
    lost: int = 0
    changes: dict[int, dict] = field(default_factory=dict)  # state_id -> request kind, reply
    resets: dict[int, str] = field(default_factory=dict)  # reset state_id -> its stream
    ops: collections.Counter = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        self.sock = self._fresh()
        self.next_id = 1

    def _fresh(self) -> zmq.Socket:
        s = CTX.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.control)
        return s

    def call(self, op: str, **args: Any) -> dict | None:
        rid, self.next_id = self.next_id, self.next_id + 1
        self.requests += 1
        self.ops[op] += 1
        self.sock.send(msgpack.packb({"op": op, "id": rid, **args}))
        deadline = time.monotonic() + 5.0
        while (left := deadline - time.monotonic()) > 0 and self.sock.poll(int(left * 1000), zmq.POLLIN):
            reply = msgpack.unpackb(self.sock.recv(), strict_map_key=False)
            if reply.get("id") == rid:
                return reply
        self.lost += 1
        self.sock.close(0)
        self.sock = self._fresh()
        return None

    def change(self, kind: str, op: str, **args: Any) -> None:
        reply = self.call(op, **args)
        if reply and reply.get("ok"):
            self.changes[reply["result"]["state_id"]] = {"kind": kind, **reply["result"]}

    def wait_announced(self, timeout: float) -> None:
        """Before a reset: let every immediate change land, so none is superseded by the reset's block 0."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.observer.lock:
                pending = [s for s, c in self.changes.items() if not c["scheduled"] and not self.observer.announced[s]]
            if not pending:
                return
            time.sleep(0.02)

    def finish(self) -> None:
        """End of the run: resume, cancel what is still scheduled, then let every change be announced."""
        self.call("resume")
        with self.observer.lock:
            waiting = [s for s, c in self.changes.items() if c["scheduled"] and not self.observer.announced[s]]
        for sid in waiting:
            self.call("cancel", state_id=sid)  # not_found: it landed meanwhile, and is announced anyway
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            with self.observer.lock:
                started = {ev["stream"] for ev in self.observer.seen.events if ev["type"] == "started"}
                if all(self.observer.announced[s] for s in self.changes) and set(self.resets.values()) <= started:
                    break
            time.sleep(0.05)
        time.sleep(0.5)  # frames of the last blocks

    def step(self) -> None:
        r, rng = self.rng.random(), self.rng
        ahead = self.observer.seen.last_block + rng.randint(3, 12)
        if r < 0.25:
            self.change("prompt", "prompt", text=f"scene {rng.randrange(10**6)}")
        elif r < 0.35:
            self.change("prompt", "prompt", text=f"blend {rng.randrange(100)}", transition="blend",
                        blend_blocks=rng.randint(1, 8), interp=rng.choice(["linear", "slerp"]))
        elif r < 0.45:
            self.change("prompt", "prompt", prompts=[{"text": "a red desert", "weight": rng.random() + 0.1},
                                                     {"text": "a blue ocean", "weight": rng.random()}],
                        mix=rng.choice(["linear", "slerp"]))
        elif r < 0.53:
            self.change("prompt", "prompt", text=f"scheduled {rng.randrange(100)}", at_block=ahead)
        elif r < 0.58:
            self.change("seed", "seed", seed=rng.randrange(2**63), at_block=ahead)
        elif r < 0.70:
            self.change("seed", "seed", seed=rng.randrange(2**63))
        elif r < 0.75 and self.model != "testsrc":
            self.change("steps", "steps", steps=rng.choice([[1000, 750, 500, 250], [1000, 500], [800]]))
        elif r < 0.80:
            scheduled = [s for s, c in self.changes.items() if c["scheduled"]]
            if scheduled:
                self.call("cancel", state_id=rng.choice(scheduled[-5:]))
        elif r < 0.85:
            self.call("pause")
            time.sleep(rng.uniform(0.0, 0.2))
            if rng.random() < 0.5:
                self.change("seed", "seed", seed=rng.randrange(1000))  # lands on resume
            self.call("resume")
        elif r < 0.89:
            self.wait_announced(10.0)
            args = {"prompt": f"reset {rng.randrange(100)}"} if rng.random() < 0.5 else {}
            reply = self.call("reset", **args)
            if reply and reply.get("ok"):
                self.resets[reply["result"]["state_id"]] = reply["result"]["stream"]
        else:
            self.call("status")


def subscriber_churn(endpoint: str, stop: threading.Event, counter: list[int]) -> None:
    """Subscribers that join, read a little and leave, all the time."""
    rng = random.Random(3)
    while not stop.is_set():
        s = CTX.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        for t in rng.choice([[b"jpeg"], [b"rgb24"], [b"event"], [b""], [b"jpeg", b"event"]]):
            s.setsockopt(zmq.SUBSCRIBE, t)
        s.connect(endpoint)
        end = time.monotonic() + rng.uniform(0.1, 1.0)
        while time.monotonic() < end and not stop.is_set():
            if s.poll(50, zmq.POLLIN):
                s.recv_multipart()
        s.close(0)
        counter[0] += 1


def violations(churn: Churn, seen: Stream, announced: collections.Counter) -> tuple[dict[str, int], dict[str, Any]]:
    """Each promise of a reply checked against the stream (see the module docstring) -> (violations, notes).

    Notes, not violations (docs/PROTOCOL.md does not say either): a `started` event carries the scene's
    state_id when it starts, which is a newer change's when one was accepted between the reset's reply
    and the new scene's block 0; and a reset followed by another before its scene began gets no `started`
    (its stream never runs)."""
    v, notes = collections.Counter(), collections.Counter()
    examples: list[dict] = []
    first_event: dict[int, tuple[dict, str]] = {}
    started: dict[str, dict] = {}
    for ev, stream in zip(seen.events, seen.stream_of_event, strict=True):
        if ev["type"] == "started":
            started.setdefault(ev["stream"], ev)
        else:
            first_event.setdefault(ev["state_id"], (ev, stream))
    for sid, change in churn.changes.items():
        if announced[sid] != 1:
            v["announced_%s" % ("never" if announced[sid] == 0 else "twice")] += 1
            continue
        ev, stream = first_event[sid]
        block = change["applies_at_block"]
        if ev["type"] in ("applied", "superseded") and ev["block"] != block:
            v[f"{ev['type']}_block"] += 1
        if ev["type"] != "applied":
            continue
        if seen.frames.get((stream, block), {ev["state"]}) != {ev["state"]}:
            v["frame_state"] += 1
            if len(examples) < 5:
                examples.append({"event": ev, "stream": stream, "frame_states": sorted(seen.frames[(stream, block)])})
        if not change["scheduled"] and block > 0 and any(s >= sid for s in seen.frames.get((stream, block - 1), ())):
            v["early"] += 1
    for sid, stream in churn.resets.items():
        if stream not in started:  # a newer reset came before its scene began: PROTOCOL.md says nothing
            notes["reset_without_started"] += 1
        elif started[stream]["state_id"] != sid:
            notes["started_with_newer_state_id"] += 1
    if examples:
        notes["examples"] = examples
    return dict(v), dict(notes)


def soak(model: str, frames: int, a: argparse.Namespace) -> dict[str, Any]:
    size = ("--width", str(a.width), "--height", str(a.height)) if model == "testsrc" else ()
    serve = Serve("--model", model, "--pace", "off", *size, log_level="warning")
    observer = Observer(serve.frames)
    stop, joined = threading.Event(), [0]
    subs = threading.Thread(target=subscriber_churn, args=(serve.frames, stop, joined), daemon=True)
    churn = Churn(serve.control, model, observer)
    samples: list[tuple[int, dict[str, int]]] = []
    t0 = time.monotonic()
    try:
        while observer.generated() <= 0 and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        subs.start()
        next_sample = 0.0
        while observer.generated() < frames and serve.alive():
            churn.step()
            if time.monotonic() >= next_sample:
                samples.append((observer.generated(), proc_status(serve.pid)))
                next_sample = time.monotonic() + 0.5
            time.sleep(a.interval)
        churn.finish()
        samples.append((observer.generated(), proc_status(serve.pid)))
        alive = serve.alive()
    finally:
        stop.set()
        subs.join(5)
        observer.stop()
        rc = serve.stop()
    with observer.lock:
        viol, notes = violations(churn, observer.seen, observer.announced)
        generated, seen_frames = observer.generated(), observer.seen.frames_seen

    def window(lo: float, hi: float, key: str) -> float:
        vals = [s.get(key, 0) for n, s in samples if lo * generated <= n <= hi * generated and s]
        return round(sum(vals) / max(len(vals), 1), 1)

    return {
        "model": model, "frames": generated, "frames_seen": seen_frames, "seconds": round(time.monotonic() - t0),
        "requests": churn.requests, "lost_replies": churn.lost, "changes": len(churn.changes),
        "resets": len(churn.resets), "ops": dict(churn.ops), "subscribers_joined": joined[0],
        "violations": sum(viol.values()), "violation_kinds": viol, "notes": notes,
        "crashed": not alive, "exit_code": rc,
        "rss_first_mb": round(window(0.0, 0.1, "VmRSS") / 1024, 1),
        "rss_last_mb": round(window(0.9, 1.01, "VmRSS") / 1024, 1),
        "threads_first": window(0.0, 0.1, "Threads"), "threads_last": window(0.9, 1.01, "Threads"),
    }


def summary(r: dict[str, Any]) -> str:
    return (f"{r['model']} {r['frames']} frames {r['seconds']} s: {r['requests']} requests, lost {r['lost_replies']}, "
            f"{r['changes']} changes + {r['resets']} resets ({r['notes'].get('reset_without_started', 0)} never "
            f"started: a newer reset came first), violations {r['violations']}, "
            f"{r['subscribers_joined']} subscribers joined/left, crashed {int(r['crashed'])}; "
            f"RSS {r['rss_first_mb']} -> {r['rss_last_mb']} MB, threads {r['threads_first']} -> {r['threads_last']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100_000, help="testsrc frames (0: skip)")
    ap.add_argument("--tiny-frames", type=int, default=3_000, help="tiny frames (0: skip)")
    ap.add_argument("--width", type=int, default=320, help="testsrc width (small: more frames per second)")
    ap.add_argument("--height", type=int, default=192)
    ap.add_argument("--interval", type=float, default=0.02, help="seconds between steering requests")
    ap.add_argument("--quick", action="store_true", help="a bounded run for the test suite")
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args(argv)
    if a.quick:
        a.frames, a.tiny_frames = min(a.frames, 2_000), min(a.tiny_frames, 100)
    runs = [soak(m, n, a) for m, n in (("testsrc", a.frames), ("tiny", a.tiny_frames)) if n > 0]
    print("soak | " + " | ".join(summary(r) for r in runs), flush=True)
    write_json(a.json, {"runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
