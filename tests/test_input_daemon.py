"""Input frames, daemon side (issue 12): the rules of sfbridge/input_buffer.py, then a real daemon on real sockets.

- Pure rules: header checks name each reason, "cover" keeps the aspect and centre-crops, the per-block take
  resamples to 16 fps (repeats a slow input, drops a fast one), uses the newest client, holds the last
  frame for 2 s and then falls back to text-only.
- Real daemon (testsrc): frames from a PUB client show in the output pixels and frame headers name them
  (client, seq, t_cap); a scheduled `input` change lands at its announced block (applied event + headers);
  every kind of bad input gives exactly one rate-limited `bad_input` event per reason and the stream goes
  on; a subprocess daemon flooded with 1000 input messages/s keeps its frame pace and its memory.
"""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import simplejpeg
import zmq
from conftest import ServeProcess, free_port, sub_socket

from sfbridge.client import Client
from sfbridge.input_buffer import BadInput, InputRing, cover, cover_box, decode, parse_header
from sfbridge.protocol import unpack

W, H = 160, 96


def header(**kw) -> bytes:
    m = {"format": "rgb24", "w": 4, "h": 2, "t_cap": 1.5, "client": "game", "seq": 7, **kw}
    return msgpack.packb({k: v for k, v in m.items() if v is not ...})


# --- pure rules --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, reason, needle", [
    (b"\xc1", "bad_header", "not msgpack"),
    (msgpack.packb([1, 2]), "bad_header", "must be a map"),
    (header(format="png"), "bad_header", "'format'"),
    (header(client=...), "bad_header", "needs field 'client'"),
    (header(client="x" * 65), "bad_header", "'client'"),
    (header(seq=-1), "bad_header", "'seq'"),
    (header(t_cap=float("nan")), "bad_header", "'t_cap'"),
    (header(w="4"), "bad_header", "'w'"),
    (header(w=0), "bad_size", "outside 1..4096"),
    (header(h=5000), "bad_size", "outside 1..4096"),
])
def test_bad_headers_name_their_reason(raw, reason, needle):
    with pytest.raises(BadInput, match=needle) as e:
        parse_header(raw)
    assert e.value.reason == reason


def test_payload_checks():
    h = parse_header(header(w=4, h=2))
    with pytest.raises(BadInput) as e:
        decode(h, b"\0" * 23, W, H)
    assert e.value.reason == "payload_size" and (e.value.client, e.value.seq) == ("game", 7)
    jh = parse_header(header(format="jpeg", w=32, h=16))
    with pytest.raises(BadInput) as e:
        decode(jh, b"\xff\xd8 not really a jpeg", W, H)
    assert e.value.reason == "bad_jpeg"
    jpeg = simplejpeg.encode_jpeg(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(BadInput, match="JPEG is 16x16, the header says 32x16") as e:
        decode(jh, jpeg, W, H)
    assert e.value.reason == "payload_size"


def test_cover_keeps_aspect_and_centre_crops():
    assert cover_box(320, 96, W, H) == (80.0, 0.0, 240.0, 96.0)  # too wide: the sides go
    x0, y0, x1, y1 = cover_box(160, 192, W, H)  # too tall: top and bottom go
    assert (x0, x1) == (0.0, 160.0) and (y0, y1) == (48.0, 144.0)
    wide = np.zeros((96, 320, 3), np.uint8)
    wide[:, 80:240] = 200  # the centre third survives, the sides are cropped away
    out = cover(wide, W, H)
    assert out.shape == (H, W, 3) and out.min() == 200
    jpeg = simplejpeg.encode_jpeg(np.full((480, 800, 3), 90, np.uint8), quality=95)
    got = decode(parse_header(header(format="jpeg", w=800, h=480)), jpeg, W, H)
    assert got.shape == (H, W, 3) and abs(float(got.mean()) - 90) < 3


def _frame(v: int) -> np.ndarray:
    return np.full((2, 2, 3), v, np.uint8)


def test_take_resamples_to_16_fps_and_holds_then_falls_back():
    ring = InputRing()
    assert ring.take(12, 0.0) is None  # nothing arrived: text-only
    for k in range(24):  # 32 fps for 0.75 s: every other frame is dropped
        ring.put(k / 32, _frame(k), ("game", k, 100 + k / 32))
    blk = ring.take(12, 23 / 32)
    assert [s[1] for s in blk.sources] == list(range(1, 24, 2)) and blk.fresh
    assert [int(f[0, 0, 0]) for f in blk.frames] == list(range(1, 24, 2))
    slow = InputRing()
    for k in range(6):  # 8 fps: every frame twice
        slow.put(k / 8, _frame(k), ("cam", k, k / 8))
    # slots end at the newest frame (0.625 s) and step back 1/16 s: the oldest slots take frame 0
    assert [s[1] for s in slow.take(12, 0.7).sources] == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    held = slow.take(12, 0.7 + 1.9)  # nothing new, 1.9 s: hold the last frame
    assert held is not None and not held.fresh and held.sources[-1][1] == 5 and held.prev is not None
    assert slow.take(12, 0.625 + 2.01) is None  # past 2 s: text-only
    slow.put(5.0, _frame(9), ("cam", 9, 5.0))
    assert slow.take(9, 5.0).sources == [("cam", 9, 5.0)] * 9  # input again: v2v again


def test_take_uses_the_client_of_the_newest_frame():
    ring = InputRing()
    ring.put(0.0, _frame(1), ("a", 0, 0.0))
    ring.put(0.01, _frame(2), ("b", 0, 0.0))
    assert {s[0] for s in ring.take(9, 0.02).sources} == {"b"}


# --- real daemon -------------------------------------------------------------------------------------------

def pub_socket(endpoint: str, sndhwm: int = 1000) -> zmq.Socket:
    """A PUB that returns once the daemon's subscription has arrived: an XPUB sends like a PUB and also hands
    the subscription up, so no frame sent next is lost to a slow join (a fixed sleep was a guess)."""
    s = zmq.Context.instance().socket(zmq.XPUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, sndhwm)
    s.connect(endpoint)
    assert s.poll(10_000, zmq.POLLIN), "the daemon's input SUB never subscribed"
    assert s.recv()[:1] == b"\x01"
    return s


def send(sock: zmq.Socket, img: np.ndarray, seq: int, client: str = "game", **kw) -> None:
    hdr = {"format": "rgb24", "w": img.shape[1], "h": img.shape[0], "t_cap": time.time(), "client": client,
           "seq": seq, **kw}
    sock.send_multipart([msgpack.packb(hdr), np.ascontiguousarray(img).tobytes()])


def split(w: int, h: int, left: tuple, right: tuple) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[:, : w // 2], img[:, w // 2:] = left, right
    return img


def frames_until(sub: zmq.Socket, pred, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    events = []
    while time.monotonic() < deadline:
        if not sub.poll(50):
            continue
        topic, hdr, payload = sub.recv_multipart()
        h = unpack(hdr)
        if topic == b"event":
            events.append(h)
            continue
        img = np.frombuffer(payload, np.uint8).reshape(h["h"], h["w"], 3)
        if pred(h, img, events):
            return h, img, events
    pytest.fail("condition not met in time")


def test_input_frames_show_in_testsrc_output_with_their_source(make_daemon):
    d = make_daemon()
    sub = sub_socket(zmq.Context.instance(), d.config.frames, "rgb24", "event")
    pub = pub_socket(d.config.input)
    with Client(control=d.config.control, frames=d.config.frames) as c:
        assert c.request("input", mode="v2v", strength=0.25)["applies_at_block"] >= 0
        img = split(320, 192, (250, 250, 250), (0, 0, 0))  # cover-resized to 160x96: left white, right black
        seq = 0

        def shows(h, out, _):
            nonlocal seq
            send(pub, img, seq)
            seq += 1
            src = h["input"]
            if src is None:
                return False
            rows = out[30:85]  # under the text strip, above the progress bar
            contrast = float(rows[:, 10:70].mean()) - float(rows[:, 90:150].mean())
            return src["client"] == "game" and h["input_mode"] == "v2v" and contrast > 100

        h, out, _ = frames_until(sub, shows)
        assert isinstance(h["input"]["seq"], int) and h["input"]["t_cap"] <= time.time()
        st = c.status()["input"]
        assert st["mode"] == "v2v" and st["strength"] == 0.25 and st["clients"]["game"]["accepted"] > 0
        c.request("input", mode="off")
        h, out, _ = frames_until(sub, lambda h, o, e: h["input_mode"] == "off")
        assert h["input"] is None  # off: no source, the plain pattern
    pub.close()
    sub.close()


def test_mode_switch_lands_at_the_announced_block(make_daemon):
    d = make_daemon()
    sub = sub_socket(zmq.Context.instance(), d.config.frames, "rgb24", "event")
    pub = pub_socket(d.config.input)
    with Client(control=d.config.control, frames=d.config.frames) as c:
        target = d.box.next_block + 4
        reply = c.request("input", mode="v2v", strength=0.5, motion_adaptive=True, at_block=target)
        assert reply["applies_at_block"] == target and reply["scheduled"]
        seen: dict[int, tuple] = {}

        def until_after(h, _, events):
            send(pub, np.full((96, 160, 3), 128, np.uint8), h["seq"])
            seen[h["block"]] = (h["input_mode"], h["input"] is not None)
            return h["block"] >= target + 1
        _, _, events = frames_until(sub, until_after, timeout=20)
        applied = [e for e in events if e["type"] == "applied" and e["state_id"] == reply["state_id"]]
        assert len(applied) == 1 and applied[0]["block"] == target and applied[0]["change"] == "input"
        assert applied[0]["input_mode"] == "v2v" and applied[0]["motion_adaptive"] is True
        assert all(mode == "off" and not src for b, (mode, src) in seen.items() if b < target)
        assert seen[target] == ("v2v", True) and seen[target + 1] == ("v2v", True)
    pub.close()
    sub.close()


def test_bad_input_gives_one_error_per_reason_and_the_stream_goes_on(make_daemon):
    d = make_daemon()
    sub = sub_socket(zmq.Context.instance(), d.config.frames, "rgb24", "event")
    pub = pub_socket(d.config.input)
    good = np.zeros((96, 160, 3), np.uint8)
    for _ in range(5):  # each bad kind five times within a second: one event per reason
        pub.send_multipart([header(client="bad", w=4, h=2), b"\0" * 5])  # payload_size
        pub.send_multipart([header(client="bad", format="jpeg", w=8, h=8), b"garbage"])  # bad_jpeg
        pub.send_multipart([header(client="bad", w=0), b""])  # bad_size (zero)
        pub.send_multipart([header(client="bad", w=5000, h=5000), b""])  # bad_size (huge)
        pub.send_multipart([header(client="bad", seq=...), good.tobytes()])  # bad_header (missing seq)
        pub.send_multipart([header(client="bad")])  # bad_message (one frame)
    for k in range(100):  # 100 good frames at once from one client: over 64/s
        send(pub, good, k, client="fast")
    t0 = time.monotonic()
    published = []

    def collect(h, _, events):
        published.append(h["seq"])
        return time.monotonic() - t0 > 0.9

    _, _, events = frames_until(sub, collect)
    errors = [e for e in events if e["type"] == "error"]
    assert all(e["code"] == "bad_input" for e in errors)
    got = sorted((e["client"], e["reason"]) for e in errors)
    assert got == [("bad", "bad_header"), ("bad", "bad_jpeg"), ("bad", "bad_message"), ("bad", "bad_size"),
                   ("bad", "payload_size"), ("fast", "rate")]
    assert all(e["message"] for e in errors) and len(published) >= 8  # frames kept coming
    # The suppressed ones are counted in the next event of that client and reason.
    pub.send_multipart([header(client="bad", w=0), b""])
    time.sleep(1.1)
    pub.send_multipart([header(client="bad", w=0), b""])
    _, _, events = frames_until(sub, lambda h, o, ev: any(e["type"] == "error" for e in ev))
    nxt = [e for e in events if e["type"] == "error"]
    assert nxt[0]["reason"] == "bad_size" and nxt[0]["suppressed"] >= 9
    stats = Client(control=d.config.control).status()["input"]
    assert stats["clients"]["fast"]["dropped"]["rate"] >= 30 and stats["errors_suppressed"] >= 9
    pub.close()
    sub.close()


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_flood_of_input_does_not_slow_the_output_or_grow_memory():
    inp = f"tcp://127.0.0.1:{free_port()}"
    d = ServeProcess("--model", "testsrc", "--width", "320", "--height", "192", "--input", inp)
    try:
        with Client(control=d.control, frames=d.frames) as c:
            c.request("input", mode="v2v", strength=0.5)
        sub = sub_socket(zmq.Context.instance(), d.frames, "jpeg")
        pub = pub_socket(inp, sndhwm=100000)  # the sender itself must not drop: the daemon gets the whole flood
        ramp = np.linspace(0, 255, 832, dtype=np.uint8)
        jpeg = simplejpeg.encode_jpeg(np.ascontiguousarray(np.broadcast_to(ramp[None, :, None], (480, 832, 3))), 80)

        def pace(seconds: float, flood: bool) -> float:
            got, t0, k = 0, time.monotonic(), 0
            while time.monotonic() - t0 < seconds:
                if flood:  # 1000 messages/s from one client (20 every 20 ms)
                    for _ in range(20):
                        pub.send_multipart([msgpack.packb({"format": "jpeg", "w": 832, "h": 480, "t_cap": time.time(),
                                                           "client": "flood", "seq": k}), jpeg])
                        k += 1
                while sub.poll(0):
                    sub.recv_multipart()
                    got += 1
                time.sleep(0.02)
            return got / seconds

        pace(1.0, False)  # warm-up: first frames, JIT-free but allocator settling
        before_fps, before_rss = pace(3.0, False), rss_kb(d.proc.pid)
        flood_fps = pace(4.0, True)
        after_rss = rss_kb(d.proc.pid)
        status = Client(control=d.control, frames=d.frames).status()["input"]["clients"]["flood"]
        print(f"fps before {before_fps:.1f}, during the flood {flood_fps:.1f}; RSS {before_rss / 1024:.1f} -> "
              f"{after_rss / 1024:.1f} MiB; flood received {status['received']}, dropped {status['dropped']}")
        assert status["received"] >= 1500 and status["dropped"].get("rate", 0) >= 1000
        assert flood_fps >= 0.8 * before_fps and flood_fps >= 12
        assert after_rss - before_rss < 40 * 1024
        pub.close()
        sub.close()
    finally:
        d.stop()


def test_a_raw_zmtp_sender_written_from_the_doc_reaches_the_output(make_daemon):
    """docs/PROTOCOL.md "Sending without a ZeroMQ library": greeting, READY as PUB, ignore the subscription,
    then [header, payload] as two ZMTP frames; the frame shows in the testsrc output and its headers."""
    import socket as sk

    d = make_daemon()
    sub = sub_socket(zmq.Context.instance(), d.config.frames, "rgb24")
    with Client(control=d.config.control, frames=d.config.frames) as c:
        c.request("input", mode="v2v", strength=0.0)
    host, port = d.config.input.removeprefix("tcp://").rsplit(":", 1)
    conn = sk.create_connection((host, int(port)))
    conn.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\0" * 16 + b"\x00" + b"\0" * 31)
    got = b""
    while len(got) < 64:
        got += conn.recv(64 - len(got))
    assert got[0] == 0xFF and got[10] == 3
    ready = b"\x05READY\x0bSocket-Type\x00\x00\x00\x03PUB"
    conn.sendall(bytes([0x04, len(ready)]) + ready)
    img = np.zeros((H, W, 3), np.uint8)
    img[:, :, 1] = 200  # all green: strength 0 shows the input itself
    seq = 0

    def green(h, out, _):
        nonlocal seq
        hdr = msgpack.packb({"format": "rgb24", "w": W, "h": H, "t_cap": 1.0, "client": "raw", "seq": seq})
        payload = img.tobytes()
        conn.sendall(bytes([0x01, len(hdr)]) + hdr + b"\x02" + len(payload).to_bytes(8, "big") + payload)
        seq += 1
        body = out[70:92].astype(int)
        return h["input"] is not None and h["input"]["client"] == "raw" and body[..., 1].mean() > 190 \
            and body[..., 0].mean() < 10
    h, _, _ = frames_until(sub, green)
    assert h["input"]["t_cap"] == 1.0
    conn.close()
    sub.close()
