"""Issue 10 on the wire: weighted prompts, transitions, scheduled changes, cancel, prompt floods.

Real sockets throughout (a DEALER for requests, a SUB for frames and events) against in-process
daemons on ``testsrc`` (and one ``tiny``). Every accepted state_id must end with exactly one
``applied``, ``superseded`` or ``cancelled`` event (docs/PROTOCOL.md 3.2).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import msgpack
import pytest
import zmq
from conftest import endpoints, sub_socket

from sfbridge.daemon import Daemon, DaemonConfig
from sfbridge.generators.testsrc import TestSource
from sfbridge.steering import block_at_pts

OUTCOMES = ("applied", "superseded", "cancelled")


def unpack(data: bytes) -> dict:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class Wire:
    """One DEALER and one SUB (jpeg + event) on a daemon; ``seen`` keeps every stream message received."""

    def __init__(self, daemon: Daemon) -> None:
        ctx = zmq.Context.instance()
        self.ctl = ctx.socket(zmq.DEALER)
        self.ctl.setsockopt(zmq.LINGER, 0)
        self.ctl.connect(daemon.config.control)
        self.sub = sub_socket(ctx, daemon.config.frames, "event", "jpeg")
        self.seen: list[tuple[str, dict]] = []
        self.next_id = 0
        self.wait(lambda t, m: t == "jpeg")

    def request(self, op: str, **args) -> dict:
        self.next_id += 1
        self.ctl.send(msgpack.packb({"op": op, "id": self.next_id, **args}, use_bin_type=True))
        assert self.ctl.poll(3000, zmq.POLLIN), f"no reply to {op}"
        reply = unpack(self.ctl.recv())
        assert reply["id"] == self.next_id
        return reply

    def ok(self, op: str, **args) -> dict:
        reply = self.request(op, **args)
        assert reply["ok"] is True, reply
        return reply["result"]

    def wait(self, pred, timeout: float = 8.0) -> list[tuple[str, dict]]:
        """Messages up to and including the first one for which ``pred(topic, msg)`` holds."""
        out, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sub.poll(50, zmq.POLLIN):
                topic, head, _ = self.sub.recv_multipart()
                out.append((topic.decode(), unpack(head)))
                self.seen.append(out[-1])
                if pred(*out[-1]):
                    return out
        pytest.fail(f"nothing matched within {timeout} s; last: {out[-3:]}")

    def read_while(self, flag: threading.Event) -> None:
        """Receive into ``seen`` while ``flag`` is set (run on a thread that then owns the SUB)."""
        while flag.is_set():
            if self.sub.poll(20, zmq.POLLIN):
                topic, head, _ = self.sub.recv_multipart()
                self.seen.append((topic.decode(), unpack(head)))

    def events(self, kind: str) -> list[dict]:
        return [m for t, m in self.seen if t == "event" and m["type"] == kind]

    def outcomes(self) -> dict[int, list[str]]:
        got: dict[int, list[str]] = {}
        for t, m in self.seen:
            if t == "event" and m["type"] in OUTCOMES:
                got.setdefault(m["state_id"], []).append(m["type"])
        return got

    def paused_at(self) -> int:
        """Pause and return the engine's next block: changes sent now land exactly there."""
        self.ok("pause")
        return self.wait(lambda t, m: t == "event" and m["type"] == "paused")[-1][1]["block"]

    def close(self) -> None:
        self.ctl.close(0)
        self.sub.close(0)


@pytest.fixture
def wire(daemon):
    w = Wire(daemon)
    yield w
    w.close()


def first_frame_of(wire: Wire, block: int) -> dict:
    return wire.wait(lambda t, m: t == "jpeg" and m["block"] >= block)[-1][1]


# --- validation -------------------------------------------------------------------------------------

TWO = [{"text": "a red desert", "weight": 0.7}, {"text": "a blue ocean", "weight": 0.3}]
BAD_PROMPTS = [
    ({"prompts": "a red desert"}, "bad_request", "prompts"),
    ({"prompts": []}, "invalid_value", "got 0"),
    ({"prompts": [{"text": f"p{i}", "weight": 1} for i in range(9)]}, "invalid_value", "got 9"),
    ({"prompts": ["a red desert"]}, "bad_request", "prompts[0]"),
    ({"prompts": [{"weight": 1}]}, "bad_request", "'text'"),
    ({"prompts": [{"text": "a"}]}, "bad_request", "'weight'"),
    ({"prompts": [{"text": "  ", "weight": 1}]}, "invalid_value", "prompts[0].text"),
    ({"prompts": [{"text": 5, "weight": 1}]}, "bad_request", "'text'"),
    ({"prompts": [{"text": "a", "weight": "1"}]}, "bad_request", "prompts[0].weight"),
    ({"prompts": [{"text": "a", "weight": True}]}, "bad_request", "prompts[0].weight"),
    ({"prompts": [{"text": "a", "weight": -0.5}]}, "invalid_value", "-0.5"),
    ({"prompts": [{"text": "a", "weight": float("nan")}]}, "invalid_value", "nan"),
    ({"prompts": [{"text": "a", "weight": float("inf")}]}, "invalid_value", "inf"),
    ({"prompts": [{"text": "a", "weight": 0}, {"text": "b", "weight": 0.0}]}, "invalid_value", "all be 0"),
    ({"prompts": [{"text": "a" * 4001, "weight": 1}]}, "invalid_value", "4001"),
    ({"prompts": [*TWO, {"text": "c", "weight": 1}], "mix": "slerp"}, "invalid_value", "got 3"),
    ({"prompts": TWO[:1], "mix": "slerp"}, "invalid_value", "exactly 2"),
    ({"text": "a", "mix": "slerp"}, "invalid_value", "got 1"),
    ({"prompts": TWO, "text": "both"}, "bad_request", "both"),
    ({}, "bad_request", "neither"),
    ({"text": "x", "transition": ""}, "invalid_value", "transition"),
    ({"text": "x", "transition": "fade"}, "invalid_value", "'fade'"),
    ({"text": "x", "interp": "cubic"}, "invalid_value", "interp"),
    ({"text": "x", "interp": 1}, "bad_request", "interp"),
    ({"prompts": TWO, "mix": ""}, "invalid_value", "mix"),
    ({"text": "x", "recache": 1}, "bad_request", "recache"),
    ({"text": "x", "recache": "yes"}, "bad_request", "recache"),
    ({"text": "x", "blend_blocks": 0}, "invalid_value", "1..64"),
    ({"text": "x", "blend_blocks": 65}, "invalid_value", "65"),
    ({"text": "x", "blend_blocks": 2.0}, "bad_request", "blend_blocks"),
    ({"text": "x", "at_block": -1}, "invalid_value", "at_block"),
    ({"text": "x", "at_block": 2**31}, "invalid_value", str(2**31)),
    ({"text": "x", "at_block": 1.5}, "bad_request", "at_block"),
    ({"text": "x", "at_block": True}, "bad_request", "at_block"),
    ({"text": "x", "at_pts": "1"}, "bad_request", "at_pts"),
    ({"text": "x", "at_pts": -0.5}, "invalid_value", "-0.5"),
    ({"text": "x", "at_pts": float("nan")}, "invalid_value", "at_pts"),
    ({"text": "x", "at_pts": 1e9}, "invalid_value", "at_pts"),
    ({"text": "x", "at_block": 3, "at_pts": 1.0}, "bad_request", "not both"),
]


@pytest.mark.parametrize(("args", "code", "words"), BAD_PROMPTS)
def test_bad_prompt_fields_are_refused_with_code_and_field(wire, args, code, words):
    reply = wire.request("prompt", **args)
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    assert words in reply["error"]["message"], reply


@pytest.mark.parametrize(("op", "args", "code", "words"), [
    ("seed", {"seed": 1, "at_block": 3, "at_pts": 1.0}, "bad_request", "not both"),
    ("seed", {"seed": 1, "at_block": -2}, "invalid_value", "-2"),
    ("seed", {"seed": 1, "at_pts": [1]}, "bad_request", "at_pts"),
    ("cancel", {}, "bad_request", "state_id"),
    ("cancel", {"state_id": "3"}, "bad_request", "state_id"),
    ("cancel", {"state_id": 10**6}, "not_found", "1000000"),
])
def test_bad_schedule_and_cancel_requests(wire, op, args, code, words):
    reply = wire.request(op, **args)
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    assert words in reply["error"]["message"], reply


def test_block_at_pts_uses_the_scenes_frame_numbering():
    # block 0: frames 0..8, block b >= 1 starts at frame 9 + 12 (b - 1); pts = frame / 16
    assert [block_at_pts(p) for p in (0.0, 0.01, 9 / 16, 9 / 16 + 1e-6, 21 / 16, 2.0)] == [0, 1, 1, 2, 2, 3]


# --- each mode lands exactly at the announced block ----------------------------------------------------

MODES = {
    "cut": {"text": "a red desert"},
    "blend linear": {"text": "a red desert", "transition": "blend", "blend_blocks": 3},
    "blend slerp": {"text": "a red desert", "transition": "blend", "interp": "slerp", "blend_blocks": 2},
    "cut recache": {"text": "a red desert", "recache": True},
    "blend recache": {"text": "a red desert", "transition": "blend", "recache": True},
    "weighted linear": {"prompts": TWO, "transition": "blend"},
    "weighted slerp": {"prompts": TWO, "mix": "slerp", "interp": "slerp", "transition": "blend", "recache": True},
}


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_lands_exactly_at_the_announced_block(wire, mode):
    args = MODES[mode]
    for _ in range(2):  # sent at two random points of a block
        res = wire.ok("prompt", **args)
        assert res["scheduled"] is False
        msgs = wire.wait(lambda t, m, sid=res["state_id"]: t == "jpeg" and m["state"] >= sid)
        assert (msgs[-1][1]["block"], msgs[-1][1]["idx"]) == (res["applies_at_block"], 0)
        applied = [m for t, m in msgs if t == "event" and m["type"] == "applied" and m["state_id"] == res["state_id"]]
        assert len(applied) == 1 and applied[0]["block"] == res["applies_at_block"]
        ev = applied[0]
        assert (ev["transition"], ev["interp"], ev["recache"], ev["blend_blocks"]) == (
            args.get("transition", "cut"), args.get("interp", "linear"), args.get("recache", False),
            args.get("blend_blocks", 4))
        if "prompts" in args:
            assert ev["prompts"] == TWO and ev["mix"] == args.get("mix", "linear")
            assert ev["prompt"] == "a red desert (0.70) + a blue ocean (0.30)"
        else:
            assert ev["prompts"] == [{"text": "a red desert", "weight": 1.0}] and ev["prompt"] == "a red desert"
        time.sleep(0.3)
    st = wire.ok("status")
    assert st["prompt"] == ev["prompt"] and st["prompts"] == ev["prompts"] and st["mix"] == ev["mix"]


def test_one_entry_list_is_the_single_prompt(wire):
    res = wire.ok("prompt", prompts=[{"text": "a lone tree", "weight": 0.25}])
    ev = wire.wait(lambda t, m: t == "event" and m["type"] == "applied" and m["state_id"] == res["state_id"])[-1][1]
    assert ev["prompt"] == "a lone tree" and ev["prompts"] == [{"text": "a lone tree", "weight": 1.0}]


def test_weighted_blend_and_recache_on_tiny(make_daemon):
    d = make_daemon(model="tiny", model_options={"width": 64, "height": 48})
    w = Wire(d)
    try:
        block = w.paused_at()
        res = w.ok("prompt", prompts=TWO, transition="blend", blend_blocks=2, recache=True)
        assert res["applies_at_block"] == block
        w.ok("resume")
        msgs = w.wait(lambda t, m: t == "jpeg" and m["state"] == res["state_id"], timeout=60)
        assert msgs[-1][1]["block"] == block
        ev = [m for t, m in msgs if t == "event" and m["type"] == "applied"][-1]
        assert (ev["state_id"], ev["block"], ev["recache"], ev["prompts"]) == (res["state_id"], block, True, TWO)
    finally:
        w.close()


# --- scheduled changes ----------------------------------------------------------------------------------

def test_scheduled_change_lands_at_its_block_and_status_lists_it(wire):
    base = wire.paused_at()
    late = wire.ok("prompt", text="a scheduled castle", transition="blend", at_block=base + 3)
    early = wire.ok("seed", seed=99, at_block=base + 2)
    now = wire.ok("seed", seed=5, at_block=max(0, base - 1))  # a block that has begun: the next one
    assert (late["applies_at_block"], late["scheduled"]) == (base + 3, True)
    assert (early["applies_at_block"], early["scheduled"]) == (base + 2, True)
    assert (now["applies_at_block"], now["scheduled"]) == (base, False)
    st = wire.ok("status")
    assert st["scheduled"] == [{"state_id": early["state_id"], "change": "seed", "at_block": base + 2},
                               {"state_id": late["state_id"], "change": "prompt", "at_block": base + 3}]
    wire.ok("resume")
    msgs = wire.wait(lambda t, m: t == "jpeg" and m["block"] == base + 3)
    applied = {m["state_id"]: m["block"] for t, m in msgs if t == "event" and m["type"] == "applied"}
    assert applied == {now["state_id"]: base, early["state_id"]: base + 2, late["state_id"]: base + 3}
    frames = [m for t, m in msgs if t == "jpeg" and m["block"] >= base]
    # state = the newest state_id that has landed: `late` (sent first, lower id) shows from its block on
    assert {m["block"]: m["state"] for m in frames} == {
        base: now["state_id"], base + 1: now["state_id"], base + 2: now["state_id"], base + 3: now["state_id"]}
    assert wire.ok("status")["scheduled"] == [] and wire.ok("status")["prompt"] == "a scheduled castle"


def test_scheduled_change_alone_shows_in_the_frame_state(wire):
    base = wire.paused_at()
    res = wire.ok("prompt", text="a harbour at noon", at_block=base + 2)
    wire.ok("resume")
    msgs = wire.wait(lambda t, m: t == "jpeg" and m["block"] == base + 2)
    before = [m["state"] for t, m in msgs if t == "jpeg" and m["block"] < base + 2]
    assert before and max(before) < res["state_id"] and msgs[-1][1]["state"] == res["state_id"]


def test_at_pts_lands_at_the_first_block_at_or_after_that_time(wire):
    wire.ok("pause")
    stream = wire.ok("reset", seed=3)["stream"]  # a fresh scene: block 0 is pts 0
    res = wire.ok("seed", seed=4, at_pts=2.0)  # frame 32: block 3 starts at frame 33 (pts 2.0625)
    assert (res["applies_at_block"], res["scheduled"]) == (3, True)
    wire.ok("resume")
    msgs = wire.wait(lambda t, m: t == "jpeg" and m["stream"] == stream and m["block"] == 3)
    firsts = {m["block"]: m["pts"] for t, m in msgs if t == "jpeg" and m["stream"] == stream and m["idx"] == 0}
    assert firsts[2] < 2.0 <= firsts[3]
    ev = [m for t, m in msgs if t == "event" and m["type"] == "applied" and m["state_id"] == res["state_id"]]
    assert [e["block"] for e in ev] == [3] and msgs[-1][1]["state"] == res["state_id"]
    past = wire.ok("seed", seed=5, at_pts=0.1)  # that time has passed: the next block
    assert past["scheduled"] is False and past["applies_at_block"] == wire.ok("status")["block"]


def test_cancelled_change_never_lands(wire):
    base = wire.paused_at()
    res = wire.ok("prompt", text="never shown", at_block=base + 2)
    assert wire.ok("cancel", state_id=res["state_id"]) == {"cancelled": res["state_id"]}
    again = wire.request("cancel", state_id=res["state_id"])
    assert again["error"]["code"] == "not_found"
    wire.ok("resume")
    wire.wait(lambda t, m: t == "jpeg" and m["block"] == base + 3)
    assert wire.outcomes()[res["state_id"]] == ["cancelled"]
    assert wire.events("cancelled")[-1]["reason"] == "cancel"
    assert wire.ok("status")["prompt"] != "never shown"
    nxt = wire.ok("seed", seed=8)  # an immediate change cannot be cancelled: it lands at the next block
    assert wire.request("cancel", state_id=nxt["state_id"])["error"]["code"] == "not_found"


def test_reset_drops_the_old_scenes_pending_changes(wire):
    base = wire.paused_at()
    a = wire.ok("prompt", text="old scene prompt", at_block=base + 2)
    b = wire.ok("seed", seed=77, at_block=base + 5)
    res = wire.ok("reset")
    assert wire.ok("status")["scheduled"] == []
    wire.ok("resume")
    wire.wait(lambda t, m: t == "jpeg" and m["stream"] == res["stream"] and m["block"] == 6, timeout=12)
    assert wire.outcomes() == {a["state_id"]: ["cancelled"], b["state_id"]: ["cancelled"]}
    assert {e["reason"] for e in wire.events("cancelled")} == {"reset"}
    assert wire.ok("status")["seed"] != 77


def test_same_kind_on_the_same_block_supersedes(wire):
    base = wire.paused_at()
    a = wire.ok("prompt", text="first castle", at_block=base + 1)
    b = wire.ok("prompt", text="second castle", at_block=base + 1)
    c = wire.ok("seed", seed=12, at_block=base + 1)
    wire.ok("resume")
    msgs = wire.wait(lambda t, m: t == "jpeg" and m["block"] == base + 1)
    sup = [m for t, m in msgs if t == "event" and m["type"] == "superseded"]
    assert [(m["state_id"], m["by"], m["block"], m["change"]) for m in sup] == [
        (a["state_id"], b["state_id"], base + 1, "prompt")]
    assert wire.outcomes() == {a["state_id"]: ["superseded"], b["state_id"]: ["applied"], c["state_id"]: ["applied"]}
    assert msgs[-1][1]["state"] == c["state_id"]


# --- prompt floods ----------------------------------------------------------------------------------------

ENCODE_S = 0.15


class SlowEncoderSource(TestSource):
    """testsrc with a deliberately slow text encoder (ENCODE_S per text, one at a time, cached), used ONLY in
    the flood test below: testsrc has no text encoder, and the flood test must count real encodings.

    Like the real model's, encoding happens in ``prepare`` (the daemon's worker, ahead of time) or, for a
    text not prepared yet, when a block needs it.
    """

    __test__ = False

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.encoded: list[str] = []
        self.threads: dict[str, str] = {}  # text -> thread that encoded it
        self._done: set[str] = set()
        self._lock = threading.Lock()

    def _encode(self, text: str) -> None:
        with self._lock:
            if text not in self._done:
                time.sleep(ENCODE_S)
                self.encoded.append(text)
                self.threads[text] = threading.current_thread().name
                self._done.add(text)

    def prepare(self, prompt: str) -> None:
        self._encode(prompt)

    def next_block(self, steering):
        for text, _ in steering.weighted():
            self._encode(text)
        return super().next_block(steering)


def test_prompt_flood_encodes_only_what_is_shown_and_keeps_pace():
    control, frames = endpoints()
    gen = SlowEncoderSource(width=160, height=96)
    d = Daemon(DaemonConfig(control=control, frames=frames), generator=gen).start()
    w = Wire(d)
    try:
        w.wait(lambda t, m: t == "jpeg" and m["block"] >= 2)
        reading = threading.Event()
        reader = threading.Thread(target=w.read_while, args=(reading,))  # a game keeps reading its stream
        reading.set()
        reader.start()
        t0 = time.monotonic()
        for i in range(200):  # 200 requests in 1 s, replies read afterwards (DEALER: any number in flight)
            w.ctl.send(msgpack.packb({"op": "prompt", "id": i, "text": f"flood prompt {i}"}))
            time.sleep(max(0.0, t0 + (i + 1) / 200 - time.monotonic()))
        sent_s = time.monotonic() - t0
        replies = []
        while len(replies) < 200:
            assert w.ctl.poll(3000, zmq.POLLIN), f"only {len(replies)} replies"
            replies.append(unpack(w.ctl.recv()))
        reading.clear()
        reader.join()
        assert sorted(r["id"] for r in replies) == list(range(200)) and all(r["ok"] for r in replies)
        ids = {r["result"]["state_id"] for r in replies}
        last = max(ids)
        msgs = w.wait(lambda t, m: t == "jpeg" and m["state"] == last, timeout=10)
        w.wait(lambda t, m: False if t != "jpeg" else m["block"] > msgs[-1][1]["block"])
        outcomes = w.outcomes()
        assert all(outcomes.get(sid) in (["applied"], ["superseded"]) for sid in ids), \
            Counter(tuple(outcomes.get(sid, ())) for sid in ids)
        shown = {m["prompt"] for m in w.events("applied") if m["state_id"] in ids} | {d.config.prompt}
        assert shown <= set(gen.encoded)
        wasted = len(gen.encoded) - len(shown)
        assert wasted <= 2, (wasted, len(shown), gen.encoded)
        # pace: frames of the flood second came at 16 fps, no stall longer than a frame or two
        times = [m["t_pub"] for t, m in w.seen if t == "jpeg" and m["t_pub"] >= time.time() - 30]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert max(gaps) < 0.2, max(gaps)
        print(f"flood: sent in {sent_s:.2f} s, shown {len(shown)}, encoded {len(gen.encoded)}, "
              f"max frame gap {max(gaps) * 1000:.0f} ms, prepare jobs run {d.preparer.jobs_run}")
    finally:
        w.close()
        d.stop()


def test_scheduled_prompt_is_encoded_when_due_and_a_cancelled_one_never():
    control, frames = endpoints()
    gen = SlowEncoderSource(width=160, height=96)  # the slow counting encoder of the flood test
    d = Daemon(DaemonConfig(control=control, frames=frames), generator=gen).start()
    w = Wire(d)
    try:
        base = w.paused_at()
        kept = w.ok("prompt", text="scheduled and kept", at_block=base + 3)
        dropped = w.ok("prompt", text="scheduled and cancelled", at_block=base + 2)
        time.sleep(0.5)
        assert "scheduled and kept" not in gen.encoded  # not at request time: only when due
        w.ok("cancel", state_id=dropped["state_id"])
        w.ok("resume")
        # due = the engine starts block base + 2; the worker encodes it while that block plays
        w.wait(lambda t, m: t == "jpeg" and m["block"] == base + 2)
        deadline = time.monotonic() + 3
        while "scheduled and kept" not in gen.encoded and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gen.encoded.count("scheduled and kept") == 1
        assert gen.threads["scheduled and kept"] == "sfbridge-prepare"  # ahead of its block, not by the engine
        msgs = w.wait(lambda t, m: t == "jpeg" and m["state"] == kept["state_id"])
        assert msgs[-1][1]["block"] == base + 3
        assert "scheduled and cancelled" not in gen.encoded
        assert w.outcomes() == {kept["state_id"]: ["applied"], dropped["state_id"]: ["cancelled"]}
    finally:
        w.close()
        d.stop()
