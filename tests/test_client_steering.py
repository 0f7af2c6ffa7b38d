"""Issue 10 steering in the Python clients: weighted prompts, blend interp/mix, recache, scheduling, cancel.

- The request fields the clients build (sfbridge/steering_args.py) are what docs/PROTOCOL.md 2.2 says,
  and every request the clients accept is accepted by the daemon's own decoder (protocol.py), while
  every one they refuse with ValueError the decoder refuses too: the client-side checks mirror the
  protocol and cannot drift from it unnoticed.
- Bad arguments raise ValueError naming the argument before anything is sent (no wait on a dead
  endpoint).
- Against a real testsrc daemon: a weighted blend and a scheduled seed land exactly at the block the
  reply announced (the `applied` event and the frame header `state`), a cancelled change never lands,
  `status` lists what is scheduled, and the asyncio client does the same requests.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import free_port

from sfbridge.aio import AsyncClient
from sfbridge.client import Client, RequestError
from sfbridge.protocol import ProtocolError, decode_request, pack
from sfbridge.steering_args import prompt_args, schedule_args

DEAD = f"tcp://127.0.0.1:{free_port()}"  # nobody listens here


def daemon_accepts(op: str, args: dict) -> object:
    """The daemon's decoder on exactly the bytes a client sends (raises ProtocolError when it refuses)."""
    return decode_request(pack({"op": op, "id": 1, **args}))[1]


# --- request fields ---------------------------------------------------------------------------------------

def test_plain_prompt_stays_as_before():
    """Old call forms send the same fields as before issue 10 (an older daemon still understands them)."""
    assert prompt_args("a cat") == {"text": "a cat", "transition": "cut"}
    assert prompt_args("a cat", "blend", 6) == {"text": "a cat", "transition": "blend", "blend_blocks": 6}
    assert prompt_args("a cat", "cut", 0) == {"text": "a cat", "transition": "cut"}  # no length for a cut


def test_weighted_prompt_fields():
    args = prompt_args(prompts=[("a red desert", 0.7), {"text": "a blue ocean", "weight": 3}], transition="blend",
                       blend_blocks=4, interp="slerp", mix="slerp", recache=True, at_block=12)
    assert args == {"prompts": [{"text": "a red desert", "weight": 0.7}, {"text": "a blue ocean", "weight": 3}],
                    "transition": "blend", "blend_blocks": 4, "interp": "slerp", "mix": "slerp", "recache": True,
                    "at_block": 12}
    req = daemon_accepts("prompt", args)
    assert req.transition == "blend" and req.blend_blocks == 4


def test_schedule_fields():
    assert schedule_args() == {}
    assert schedule_args(at_block=0) == {"at_block": 0}
    assert schedule_args(at_pts=2) == {"at_pts": 2}
    assert schedule_args(at_pts=1.25) == {"at_pts": 1.25}
    for op, args in [("seed", {"seed": 5, "at_block": 3}), ("steps", {"steps": [1000, 500], "at_pts": 0.5}),
                     ("prompt", prompt_args("x", at_pts=4.0)), ("cancel", {"state_id": 7})]:
        daemon_accepts(op, args)


BAD_PROMPTS = [
    ({}, "text or prompts"),
    ({"text": "a", "prompts": [("b", 1)]}, "text or prompts"),
    ({"text": ""}, "text must not be empty"),
    ({"text": "   "}, "text must not be empty"),
    ({"text": "x" * 4001}, "max 4000"),
    ({"text": 5}, "text must be a string"),
    ({"prompts": []}, "1 to 8 entries"),
    ({"prompts": [("p", 1)] * 9}, "1 to 8 entries"),
    ({"prompts": [("a", 0), ("b", 0)]}, "must not all be 0"),
    ({"prompts": [("a", -0.5)]}, r"prompts\[0\] weight"),
    ({"prompts": [("a", float("nan"))]}, r"prompts\[0\] weight"),
    ({"prompts": [("a", float("inf"))]}, r"prompts\[0\] weight"),
    ({"prompts": [("a", True)]}, r"prompts\[0\] weight"),
    ({"prompts": [("a", "1")]}, r"prompts\[0\] weight"),
    ({"prompts": [("a", 1), ("", 1)]}, r"prompts\[1\] text must not be empty"),
    ({"prompts": [{"text": "a"}]}, r"prompts\[0\] must have exactly the keys"),
    ({"prompts": [("a", 1, 2)]}, r"prompts\[0\] must be a \(text, weight\) pair"),
    ({"prompts": "a cat"}, "prompts must be a list"),
    ({"prompts": [("a", 1), ("b", 1), ("c", 1)], "mix": "slerp"}, "exactly 2 prompts"),
    ({"prompts": [("a", 1)], "mix": "slerp"}, "exactly 2 prompts"),
    ({"prompts": [("a", 1), ("b", 1)], "mix": "cubic"}, "mix must be one of linear, slerp"),
    ({"text": "a", "transition": "fade"}, "transition must be one of cut, blend"),
    ({"text": "a", "transition": ""}, "transition must be one of cut, blend"),
    ({"text": "a", "transition": "blend", "blend_blocks": 0}, "blend_blocks must be an integer in 1..64"),
    ({"text": "a", "transition": "blend", "blend_blocks": 65}, "blend_blocks must be an integer in 1..64"),
    ({"text": "a", "interp": "cubic"}, "interp must be one of linear, slerp"),
    ({"text": "a", "at_block": -1}, "at_block must be an integer in 0..2147483647"),
    ({"text": "a", "at_block": 2**31}, "at_block must be an integer in 0..2147483647"),
    ({"text": "a", "at_block": 1.5}, "at_block must be an integer in"),
    ({"text": "a", "at_block": True}, "at_block must be an integer in"),
    ({"text": "a", "at_pts": 1e9}, "at_pts must be a finite number of seconds in 0..1e"),
    ({"text": "a", "at_pts": -0.1}, "at_pts must be a finite number"),
    ({"text": "a", "at_pts": float("nan")}, "at_pts must be a finite number"),
    ({"text": "a", "at_block": 1, "at_pts": 1.0}, "at_block or at_pts, not both"),
]


@pytest.mark.parametrize("kw, match", BAD_PROMPTS)
def test_bad_prompt_arguments_raise_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        prompt_args(**kw)


# Raw wire versions of refused requests that the daemon must refuse too (the client never sends them).
WIRE_REFUSED = [
    {"text": "a", "prompts": [{"text": "b", "weight": 1}]},
    {"prompts": []},
    {"prompts": [{"text": "p", "weight": 1}] * 9},
    {"prompts": [{"text": "a", "weight": 0}, {"text": "b", "weight": 0}]},
    {"prompts": [{"text": "a", "weight": -0.5}]},
    {"prompts": [{"text": "a", "weight": 1}, {"text": "", "weight": 1}]},
    {"prompts": [{"text": "a", "weight": 1}] * 3, "mix": "slerp"},
    {"prompts": [{"text": "a", "weight": 1}, {"text": "b", "weight": 1}], "mix": "cubic"},
    {"text": "a", "transition": ""},
    {"text": "a", "interp": "cubic"},
    {"text": "a", "at_block": -1},
    {"text": "a", "at_block": 2**31},
    {"text": "a", "at_pts": -0.1},
    {"text": "a", "at_pts": 1e9},
    {"text": "a", "at_block": 1, "at_pts": 1.0},
]


@pytest.mark.parametrize("args", WIRE_REFUSED)
def test_daemon_refuses_what_the_client_refuses(args):
    with pytest.raises(ProtocolError) as err:
        daemon_accepts("prompt", args)
    assert err.value.code in ("bad_request", "invalid_value")


@pytest.mark.parametrize("call", [
    lambda c: c.set_prompt(prompts=[("a", 0), ("b", 0)]),
    lambda c: c.set_prompt("a", at_block=3, at_pts=1.0),
    lambda c: c.set_seed(1, at_block=-2),
    lambda c: c.set_steps([1000, 500], at_pts=float("inf")),
    lambda c: c.cancel(-1),
    lambda c: c.cancel("7"),
])
def test_refused_before_sending(call):
    """ValueError at once: a dead endpoint would take the whole request timeout otherwise."""
    with Client(control=DEAD, timeout=5.0, retries=1) as c:
        t0 = time.monotonic()
        with pytest.raises(ValueError):
            call(c)
        assert time.monotonic() - t0 < 1.0


def test_old_positional_signatures_still_work():
    """set_prompt(text, transition, blend_blocks) and set_seed(seed) as callers wrote them before."""
    import inspect

    for cls in (Client, AsyncClient):
        params = list(inspect.signature(cls.set_prompt).parameters)
        assert params[1:4] == ["text", "transition", "blend_blocks"], cls
        assert list(inspect.signature(cls.set_seed).parameters)[1] == "seed"


# --- against a real daemon (testsrc, in-process, real sockets) --------------------------------------------

def watch_until(it, done, events: list, frames: list, timeout: float = 20.0) -> None:
    """Read frames and events from a subscribe() iterator into the lists until done() or the timeout."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out; events {[e.get('type') for e in events][-20:]}"
        item = next(it)
        (events if isinstance(item, dict) else frames).append(item)


def check_landed(sid: int, block: int, events: list, frames: list, stream: str) -> dict:
    """The `applied` event of sid is at ``block`` and frame headers change ``state`` exactly there (frames
    dropped by the high-water mark under load do not matter: every frame that arrived is checked)."""
    applied = [e for e in events if e.get("type") == "applied" and e.get("state_id") == sid]
    assert len(applied) == 1 and applied[0]["block"] == block, (sid, block, applied)
    for f in frames:
        if f.header["stream"] == stream:
            assert (f.state >= sid) == (f.block >= block), (sid, block, f.header)
    return applied[0]


def test_weighted_blend_and_scheduled_changes_land_at_their_blocks(client):
    events: list[dict] = []
    frames: list = []
    it = client.subscribe(format="jpeg", latest_only=False, events=True, timeout=10, decode=False)
    watch_until(it, lambda: bool(frames), events, frames)
    stream = frames[-1].header["stream"]

    r = client.set_prompt(prompts=[("a red desert", 0.7), {"text": "a blue ocean", "weight": 0.3}],
                          transition="blend", blend_blocks=3, interp="slerp", mix="linear")
    assert r["scheduled"] is False and r["applies_at_block"] >= frames[-1].block
    watch_until(it, lambda: any(f.block > r["applies_at_block"] for f in frames) and any(
        e.get("state_id") == r["state_id"] for e in events), events, frames)
    ap = check_landed(r["state_id"], r["applies_at_block"], events, frames, stream)
    assert ap["prompts"] == [{"text": "a red desert", "weight": 0.7}, {"text": "a blue ocean", "weight": 0.3}]
    assert (ap["mix"], ap["interp"], ap["transition"], ap["blend_blocks"]) == ("linear", "slerp", "blend", 3)
    assert client.status()["mix"] == "linear" and len(client.status()["prompts"]) == 2

    target = client.status()["block"] + 5
    s = client.set_seed(99, at_block=target)
    assert (s["applies_at_block"], s["scheduled"]) == (target, True)
    c = client.set_prompt("never shown", at_pts=(9 + 12 * target) / 16)  # first frame of block target + 1
    assert (c["applies_at_block"], c["scheduled"]) == (target + 1, True)
    scheduled = client.status()["scheduled"]
    assert {"state_id": s["state_id"], "change": "seed", "at_block": target} in scheduled
    assert {"state_id": c["state_id"], "change": "prompt", "at_block": target + 1} in scheduled
    assert client.cancel(c["state_id"]) == {"cancelled": c["state_id"]}
    with pytest.raises(RequestError) as err:
        client.cancel(c["state_id"])
    assert err.value.code == "not_found"
    assert all(x["state_id"] != c["state_id"] for x in client.status()["scheduled"])
    watch_until(it, lambda: any(f.block > target + 2 for f in frames), events, frames, timeout=30)
    ap = check_landed(s["state_id"], target, events, frames, stream)
    assert (ap["change"], ap["seed"]) == ("seed", 99)
    about = [e for e in events if e.get("state_id") == c["state_id"]]
    assert [(e["type"], e.get("reason")) for e in about] == [("cancelled", "cancel")], about
    assert all(f.state < c["state_id"] for f in frames)


def test_async_client_steering(daemon):
    async def run() -> None:
        ac = AsyncClient(control=daemon.config.control, frames=daemon.config.frames, timeout=3.0)
        try:
            r = await ac.set_prompt(prompts=[("a", 1), ("b", 3)], mix="slerp", transition="blend", blend_blocks=2,
                                    recache=True)
            assert r["scheduled"] is False and r["state_id"] > 0
            block = (await ac.status())["block"]
            s = await ac.set_seed(5, at_block=block + 50)
            assert (s["applies_at_block"], s["scheduled"]) == (block + 50, True)
            assert await ac.cancel(s["state_id"]) == {"cancelled": s["state_id"]}
            with pytest.raises(RequestError) as err:
                await ac.set_steps([1000, 500], at_block=block + 60)
            assert err.value.code == "not_supported"  # testsrc has no steps
        finally:
            ac.close()

    asyncio.run(run())
