"""End-to-end tests of the daemon over real tcp loopback sockets (testsrc generator, no mocks)."""

from __future__ import annotations

import asyncio
import time

import msgpack
import numpy as np
import pytest
import zmq
from conftest import free_port, recv_until, sub_socket

from sfbridge.aio import AsyncClient
from sfbridge.client import Client, DaemonUnavailable, RequestError
from sfbridge.encoders import decode_jpeg
from sfbridge.protocol import PROTOCOL_VERSION

HEADER_TYPES = {"v": int, "stream": str, "seq": int, "block": int, "idx": int, "frame": int, "pts": float,
                "w": int, "h": int, "format": str, "state": int, "t_gen": float, "t_pub": float}


def take(client: Client, n: int, fmt: str = "jpeg", **kw) -> list:
    out = []
    for f in client.subscribe(format=fmt, latest_only=False, timeout=5, **kw):
        out.append(f)
        if len(out) >= n:
            break
    return out


def test_frames_have_increasing_seq_and_complete_headers(daemon, client):
    frames = take(client, 30)
    seqs = [f.seq for f in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for f in frames:
        for key, typ in HEADER_TYPES.items():
            assert isinstance(f.header[key], typ), (key, f.header)
        assert f.header["v"] == PROTOCOL_VERSION
        assert (f.w, f.h) == (160, 96) and f.image.shape == (96, 160, 3) and f.image.dtype == np.uint8
        assert f.format == "jpeg"
        assert f.pts == pytest.approx(f.frame / 16.0)
        assert f.idx < (9 if f.block == 0 else 12)
        assert f.t_pub >= f.t_gen
    # block structure: consecutive frames of a block have consecutive idx
    for a, b in zip(frames, frames[1:], strict=False):
        if a.block == b.block and b.seq == a.seq + 1:
            assert b.idx == a.idx + 1 and b.frame == a.frame + 1


def test_two_subscribers_with_different_formats(daemon, client):
    other = Client(control=daemon.config.control, frames=daemon.config.frames)
    ctx = zmq.Context.instance()
    raw = sub_socket(ctx, daemon.config.frames, "rgb24")
    jpg = sub_socket(ctx, daemon.config.frames, "jpeg")
    try:
        # Both subscribed: the same seq arrives in both formats and the pictures agree.
        got: dict[str, dict[int, tuple[dict, bytes]]] = {"rgb24": {}, "jpeg": {}}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (set(got["rgb24"]) & set(got["jpeg"])):
            for s in (raw, jpg):
                if s.poll(20, zmq.POLLIN):
                    topic, h, payload = s.recv_multipart()
                    header = msgpack.unpackb(h)
                    got[topic.decode()][header["seq"]] = (header, payload)
        common = sorted(set(got["rgb24"]) & set(got["jpeg"]))
        assert common, "no frame seen in both formats"
        h_raw, p_raw = got["rgb24"][common[0]]
        h_jpg, p_jpg = got["jpeg"][common[0]]
        assert h_raw["format"] == "rgb24" and h_jpg["format"] == "jpeg"
        assert len(p_raw) == 160 * 96 * 3
        img_raw = np.frombuffer(p_raw, np.uint8).reshape(96, 160, 3)
        diff = np.abs(img_raw.astype(int) - decode_jpeg(p_jpg).astype(int)).mean()
        assert diff < 8, diff  # JPEG loss only
        st = other.status()["stats"]
        assert st["subscribers"].get("rgb24", 0) >= 1 and st["subscribers"].get("jpeg", 0) >= 1
    finally:
        raw.close(0)
        jpg.close(0)
        other.close()


def test_only_subscribed_formats_are_encoded(daemon, client):
    held = sub_socket(zmq.Context.instance(), daemon.config.frames, "rgb24")  # encode_ms lists subscribed formats
    take(client, 5, fmt="rgb24")
    time.sleep(1.2)  # a stats period
    enc = client.status()["stats"]["encode_ms"]
    assert "rgb24" in enc and "jpeg" not in enc
    held.close(0)


def test_prompt_change_shows_in_next_block_headers_and_event(daemon, client):
    ctx = zmq.Context.instance()
    ev = sub_socket(ctx, daemon.config.frames, "event")
    take(client, 3)
    res = client.set_prompt("a red sports car in the desert")
    new_state, block = res["state_id"], res["applies_at_block"]
    frames = []
    for f in client.subscribe(latest_only=False, timeout=5):
        frames.append(f)
        if f.block > block:
            break
    for f in frames:
        if f.block < block:
            assert f.state < new_state
        else:
            assert f.state == new_state, (f.block, block, f.state, new_state)
    msg = recv_until(ev, lambda m: msgpack.unpackb(m[1]).get("type") == "applied")
    event = msgpack.unpackb(msg[1])
    assert event["state_id"] == new_state and event["block"] == block
    assert event["prompt"] == "a red sports car in the desert" and event["change"] == "prompt"
    assert client.status()["prompt"] == "a red sports car in the desert"
    ev.close(0)


def test_prompt_changes_picture(make_daemon):
    d = make_daemon(pace="off")
    c = Client(control=d.config.control, frames=d.config.frames)
    before = take(c, 1, fmt="rgb24")[0]
    res = c.set_prompt("something completely different", transition="cut")
    after = next(f for f in c.subscribe("rgb24", latest_only=False, timeout=5) if f.state == res["state_id"])
    # Colours come from the prompt: the mean colour must move.
    assert np.abs(before.image.mean(axis=(0, 1)) - after.image.mean(axis=(0, 1))).max() > 5
    c.close()


def test_pause_stops_frames_and_resume_continues(daemon, client):
    take(client, 3)
    assert client.pause()["paused"] is True  # the reply also names the last published seq
    time.sleep(1.0)  # let the block in flight drain
    ctx = zmq.Context.instance()
    s = sub_socket(ctx, daemon.config.frames, "jpeg")
    first = recv_until(s, lambda m: True, timeout=2)  # the last-value re-send for a new subscriber
    seq_paused = msgpack.unpackb(first[1])["seq"]
    time.sleep(1.0)
    news = []
    while s.poll(10, zmq.POLLIN):
        news.append(msgpack.unpackb(s.recv_multipart()[1])["seq"])
    assert all(q <= seq_paused for q in news), "frames kept coming while paused"
    assert client.status()["paused"] is True
    assert client.resume() == {"paused": False}
    msg = recv_until(s, lambda m: msgpack.unpackb(m[1])["seq"] > seq_paused, timeout=3)
    assert msg
    s.close(0)


def test_reset_restarts_block_index_and_stream(daemon, client):
    frames = [f for f in take(client, 40) if f.block >= 2]
    assert frames, "stream did not reach block 2"
    old_stream = frames[-1].stream
    res = client.reset(prompt="a quiet forest", seed=7)
    assert res["stream"] != old_stream
    f = next(f for f in client.subscribe(latest_only=False, timeout=5) if f.stream == res["stream"])
    assert f.block == 0 and f.frame == 0 and f.idx == 0 and f.state == res["state_id"]
    st = client.status()
    assert st["prompt"] == "a quiet forest" and st["seed"] == 7


def test_steps_not_supported_on_testsrc(client):
    with pytest.raises(RequestError) as err:
        client.set_steps([1000, 500])
    assert err.value.code == "not_supported"


HOSTILE = [
    (b"\xc1", "bad_msgpack"),  # reserved msgpack byte
    (b"not msgpack at all \xff\xfe", "bad_msgpack"),
    (msgpack.packb([1, 2, 3]), "bad_request"),
    (msgpack.packb("ping"), "bad_request"),
    (msgpack.packb({"id": 1}), "bad_request"),
    (msgpack.packb({"op": 5, "id": 2}), "bad_request"),
    (msgpack.packb({"op": "explode", "id": 3}), "unknown_op"),
    (msgpack.packb({"op": "prompt", "id": 4}), "bad_request"),
    (msgpack.packb({"op": "prompt", "id": 5, "text": 12}), "bad_request"),
    (msgpack.packb({"op": "prompt", "id": 6, "text": "   "}), "invalid_value"),
    (msgpack.packb({"op": "prompt", "id": 7, "text": "x" * 5000}), "invalid_value"),
    (msgpack.packb({"op": "prompt", "id": 8, "text": "ok", "transition": "wipe"}), "invalid_value"),
    (msgpack.packb({"op": "seed", "id": 9, "seed": -1}), "invalid_value"),
    (msgpack.packb({"op": "seed", "id": 10, "seed": True}), "bad_request"),
    (msgpack.packb({"op": "seed", "id": 11, "seed": "12"}), "bad_request"),
    (msgpack.packb({"op": "steps", "id": 12, "steps": [250, 500]}), "invalid_value"),
    (msgpack.packb({"op": "reset", "id": 13, "seed": 1.5}), "bad_request"),
    (msgpack.packb({"op": "ping", "id": 14, "pad": "x" * 70000}), "too_large"),
    (msgpack.packb({1: 2, b"op": b"ping"}), "bad_request"),
]


def raw_request(sock: zmq.Socket, *frames: bytes, timeout: float = 3.0) -> dict:
    sock.send_multipart(list(frames))
    assert sock.poll(int(timeout * 1000), zmq.POLLIN), "no reply"
    return msgpack.unpackb(sock.recv(), strict_map_key=False)


def test_hostile_messages_get_error_replies_while_frames_flow(daemon, client, dealer):
    ctx = zmq.Context.instance()
    frames_sock = sub_socket(ctx, daemon.config.frames, "jpeg")
    recv_until(frames_sock, lambda m: True)
    for body, code in HOSTILE:
        reply = raw_request(dealer, body)
        assert reply["ok"] is False and reply["error"]["code"] == code, (body[:40], reply)
        assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
        assert reply["v"] == PROTOCOL_VERSION
    # ids are echoed even for rejected requests
    assert raw_request(dealer, msgpack.packb({"op": "explode", "id": "abc"}))["id"] == "abc"
    # several frames after the envelope
    reply = raw_request(dealer, b"a", b"b")
    assert reply["error"]["code"] == "bad_request"
    # frames still flow and the daemon still answers
    before = msgpack.unpackb(recv_until(frames_sock, lambda m: True)[1])["seq"]
    recv_until(frames_sock, lambda m: msgpack.unpackb(m[1])["seq"] > before + 3)
    assert client.ping()["pong"] is True
    frames_sock.close(0)


def test_message_over_socket_limit_drops_only_that_peer(daemon, client):
    ctx = zmq.Context.instance()
    big = ctx.socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    big.connect(daemon.config.control)
    big.send(b"\x00" * (2 << 20))  # over ZMQ_MAXMSGSIZE: libzmq disconnects this peer, no reply
    assert not big.poll(500, zmq.POLLIN)
    big.close(0)
    assert client.status()["model"] == "testsrc"


def test_req_socket_clients_work(daemon):
    s = zmq.Context.instance().socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(daemon.config.control)
    s.send(msgpack.packb({"op": "ping", "id": 99}))
    assert s.poll(3000, zmq.POLLIN)
    reply = msgpack.unpackb(s.recv())
    assert reply["ok"] and reply["id"] == 99
    s.close(0)


def test_late_joiner_gets_last_frame_while_paused(daemon, client):
    take(client, 2)
    client.pause()
    time.sleep(1.0)
    f = next(iter(client.subscribe("rgb24", timeout=2)))
    assert f.image.shape == (96, 160, 3)
    client.resume()


def test_subscriber_that_never_reads_does_not_slow_the_engine(make_daemon):
    d = make_daemon(pace="off", model_options={"width": 640, "height": 384})
    ctx = zmq.Context.instance()
    stuck = sub_socket(ctx, d.config.frames, "rgb24", "jpeg")  # never reads
    c = Client(control=d.config.control, frames=d.config.frames)
    time.sleep(0.5)
    t0, f0 = time.monotonic(), c.status()["stats"].get("frames_total", 0)
    n = 0
    for _frame in c.subscribe("jpeg", timeout=5):
        n += 1
        if time.monotonic() - t0 > 3:
            break
    f1 = c.status()["stats"]["frames_total"]
    rate = (f1 - f0) / (time.monotonic() - t0)
    assert n > 10 and rate > 20, (n, rate)
    # the stuck subscriber is bounded: the publisher kept up and dropped nothing on its side
    assert c.status()["stats"]["queue_blocks"] <= 1
    stuck.close(0)
    c.close()


def test_client_times_out_without_daemon():
    c = Client(control=f"tcp://127.0.0.1:{free_port()}", frames=f"tcp://127.0.0.1:{free_port()}",
               timeout=0.2, retries=2)
    t0 = time.monotonic()
    with pytest.raises(DaemonUnavailable, match="is `sfbridge serve` running"):
        c.status()
    assert time.monotonic() - t0 < 2
    with pytest.raises(DaemonUnavailable):
        next(iter(c.subscribe(timeout=0.3)))
    c.close()


def test_async_client(daemon):
    async def main():
        ac = AsyncClient(control=daemon.config.control, frames=daemon.config.frames)
        st = await ac.status()
        res = await ac.set_prompt("async prompt")
        async for f in ac.subscribe("rgb24", timeout=5):
            if f.state == res["state_id"]:
                break
        ac.close()
        return st, f

    st, f = asyncio.run(main())
    assert st["protocol"] == PROTOCOL_VERSION and f.image.shape == (96, 160, 3)


def test_async_client_times_out_without_daemon():
    async def main():
        ac = AsyncClient(control=f"tcp://127.0.0.1:{free_port()}", timeout=0.2, retries=1)
        try:
            await ac.status()
        finally:
            ac.close()

    with pytest.raises(DaemonUnavailable):
        asyncio.run(main())


def test_ipc_endpoints(make_daemon, tmp_path):
    from sfbridge.daemon import Daemon, DaemonConfig

    cfg = DaemonConfig(control=f"ipc://{tmp_path}/c.sock", frames=f"ipc://{tmp_path}/f.sock",
                       model_options={"width": 64, "height": 48})
    d = Daemon(cfg).start()
    try:
        c = Client(control=cfg.control, frames=cfg.frames)
        assert c.ping()["pong"]
        assert next(iter(c.subscribe(timeout=5))).image.shape == (48, 64, 3)
        c.close()
    finally:
        d.stop()


def test_event_subscriber_gets_state_at_once(daemon, client):
    client.set_prompt("state for late joiners")
    s = sub_socket(zmq.Context.instance(), daemon.config.frames, "event")
    msg = recv_until(s, lambda m: msgpack.unpackb(m[1])["type"] == "state", timeout=3)
    ev = msgpack.unpackb(msg[1])
    assert ev["prompt"] == "state for late joiners" and ev["model"] == "testsrc" and ev["stream"]
    assert len(msg) == 3 and msg[2] == b""
    s.close(0)


def test_pacing_follows_a_slow_generator_evenly(make_daemon):
    # 12 frames per 1.2 s block = 10 fps production: frames must come evenly at ~10 fps, not in bursts
    d = make_daemon(model_options={"block_delay": 1.2})
    c = Client(control=d.config.control, frames=d.config.frames)
    arrivals = []
    for f in c.subscribe("rgb24", latest_only=False, timeout=5):
        if f.block >= 2:  # skip the first blocks (9 frames, warm-up)
            arrivals.append(time.monotonic())
        if len(arrivals) >= 24:
            break
    gaps = np.diff(arrivals)
    assert 0.07 < float(np.median(gaps)) < 0.14, gaps
    assert gaps.max() < 0.4, gaps  # no stop-and-burst at block boundaries
    c.close()


def test_pacing_native_rate_when_generation_keeps_up(daemon, client):
    t = [f.t_pub for f in take(client, 33)[1:]]
    rate = (len(t) - 1) / (t[-1] - t[0])
    assert 14.5 < rate < 17.5, rate


def test_prompt_requests_prepare_the_prompt_off_the_engine_thread():
    import threading

    from conftest import endpoints

    from sfbridge.daemon import Daemon, DaemonConfig
    from sfbridge.generators.testsrc import TestSource

    class Recording(TestSource):
        def __init__(self):
            super().__init__(64, 48)
            self.prepared: list[tuple[str, str]] = []

        def prepare(self, prompt):
            self.prepared.append((prompt, threading.current_thread().name))

    gen = Recording()
    control, frames = endpoints()
    d = Daemon(DaemonConfig(control=control, frames=frames), generator=gen).start()
    try:
        c = Client(control=control, frames=frames)
        c.pause()  # "first" stays pending: a prompt superseded before its block (issue 10) is never prepared
        c.set_prompt("first")
        deadline = time.monotonic() + 3
        while not gen.prepared and time.monotonic() < deadline:
            time.sleep(0.02)
        c.reset(prompt="second")
        deadline = time.monotonic() + 3
        while len(gen.prepared) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [p for p, _ in gen.prepared] == ["first", "second"]
        assert all(t.startswith("sfbridge-prepare") for _, t in gen.prepared), gen.prepared
        c.close()
    finally:
        d.stop()
