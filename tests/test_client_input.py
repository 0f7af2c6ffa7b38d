"""Python clients' input side (issue 12): ``send_frame``, ``stream_frames``, ``set_input``, the ``input`` CLI.

- Against a plain bound SUB (what the daemon binds): the wire message is ``[msgpack header, payload]``
  with the documented fields, rgb24 rows top first, JPEG bytes untouched with w/h from the JPEG header;
  the asyncio client sends the same; ``stream_frames`` paces to ``fps``; bad frames and arguments raise
  ValueError before anything is sent; with no daemon a send never blocks.
- Against a real ``sfbridge serve --model testsrc`` subprocess: ``set_input`` / ``sfbridge input`` get a
  reply with the block they land at, and frames sent with ``send_frame`` show in the output pixels, with
  frame headers naming this client's ``input`` (client, seq, t_cap).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
import simplejpeg
import zmq
from conftest import free_port

from sfbridge.aio import AsyncClient
from sfbridge.client import Client
from sfbridge.input_frames import input_args


@pytest.fixture
def sub():
    """A bound SUB subscribed to everything, like the daemon's input socket; yields (socket, endpoint)."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    port = s.bind_to_random_port("tcp://127.0.0.1")
    yield s, f"tcp://127.0.0.1:{port}"
    s.close()


def receive(s: zmq.Socket, n: int, timeout: float = 5.0) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        if s.poll(50):
            out.append(s.recv_multipart())
    return out


def send_until_received(send, s: zmq.Socket, timeout: float = 5.0) -> list[bytes]:
    """A PUB drops what it sends before the SUB's subscription arrives: resend until one gets through."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        send()
        if s.poll(50):
            return s.recv_multipart()
    pytest.fail("no input message arrived")


def gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), np.full_like(x, 77)], -1).astype(np.uint8)


def test_rgb24_message_on_the_wire(sub):
    s, ep = sub
    img = gradient(36, 52)
    with Client(control=f"tcp://127.0.0.1:{free_port()}", input=ep, client_id="game-1") as c:
        msg = send_until_received(lambda: c.send_frame(img, t_cap=123.5), s)
        header = msgpack.unpackb(msg[0])
        assert len(msg) == 2
        assert set(header) == {"format", "w", "h", "t_cap", "client", "seq"}
        assert (header["format"], header["w"], header["h"], header["t_cap"], header["client"]) == \
            ("rgb24", 52, 36, 123.5, "game-1")
        got = np.frombuffer(msg[1], np.uint8).reshape(36, 52, 3)
        assert np.array_equal(got, img)  # rows top first, RGB order
        # seq counts up per client; a non-contiguous view is sent as its pixels
        first = header["seq"]
        c.send_frame(img[::-1, ::2], t_cap=1.0)
        msg2 = receive(s, 1)[0]
        h2 = msgpack.unpackb(msg2[0])
        assert h2["seq"] == first + 1 and (h2["w"], h2["h"]) == (26, 36)
        assert np.array_equal(np.frombuffer(msg2[1], np.uint8).reshape(36, 26, 3), img[::-1, ::2])


def test_jpeg_bytes_pass_through(sub):
    s, ep = sub
    jpeg = simplejpeg.encode_jpeg(gradient(48, 80), 90, colorsubsampling="420")
    with Client(input=ep, client_id="cam") as c:
        msg = send_until_received(lambda: c.send_frame(jpeg, seq=41), s)
    header = msgpack.unpackb(msg[0])
    assert (header["format"], header["w"], header["h"], header["seq"], header["client"]) == ("jpeg", 80, 48, 41, "cam")
    assert msg[1] == jpeg
    assert abs(header["t_cap"] - time.time()) < 5  # default capture time: now, on the wall clock


def test_async_client_sends_the_same(sub):
    s, ep = sub
    img = gradient(8, 8)

    async def main() -> list[bytes]:
        c = AsyncClient(input=ep, client_id="aio")
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                await c.send_frame(img, t_cap=2.0)
                if s.poll(50):
                    return s.recv_multipart()
            return []
        finally:
            c.close()

    msg = asyncio.run(main())
    assert msg, "no message from AsyncClient.send_frame"
    assert msgpack.unpackb(msg[0])["client"] == "aio" and msg[1] == img.tobytes()


def test_stream_frames_paces_to_fps(sub):
    s, ep = sub
    frames = [np.full((4, 4, 3), i, np.uint8) for i in range(9)]
    with Client(input=ep, client_id="pace") as c:
        send_until_received(lambda: c.send_frame(frames[0]), s)  # connected and subscribed
        t0 = time.monotonic()
        sent = c.stream_frames(frames, fps=20)
        wall = time.monotonic() - t0
        got = receive(s, 9)
    assert sent == 9
    assert 0.38 <= wall < 1.2, wall  # 8 periods of 50 ms between 9 frames
    assert [m[1][0] for m in got] == list(range(9))


def test_async_stream_frames_takes_async_iterables(sub):
    s, ep = sub

    async def gen():
        for i in range(4):
            yield np.full((2, 2, 3), i, np.uint8)

    async def main() -> tuple[int, float]:
        c = AsyncClient(input=ep)
        try:
            t0 = time.monotonic()
            n = await c.stream_frames(gen(), fps=40)
            return n, time.monotonic() - t0
        finally:
            c.close()

    n, wall = asyncio.run(main())
    assert n == 4 and 0.07 <= wall < 0.8, (n, wall)


@pytest.mark.parametrize("image, needle", [
    (np.zeros((4, 4), np.uint8), "[H, W, 3] uint8"),
    (np.zeros((4, 4, 3), np.float32), "[H, W, 3] uint8"),
    (np.zeros((4, 4, 4), np.uint8), "[H, W, 3] uint8"),
    (np.zeros((0, 4, 3), np.uint8), "each side must be 1..4096"),
    (np.zeros((2, 4097, 3), np.uint8), "each side must be 1..4096"),
    (b"not a jpeg", "bytes are not a JPEG"),
    ("a string", "ndarray or JPEG bytes"),
])
def test_bad_frames_raise_before_sending(image, needle):
    with Client(input=f"tcp://127.0.0.1:{free_port()}") as c:
        with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
            c.send_frame(image)
        assert c._input_sock is None  # nothing was connected for a refused frame


@pytest.mark.parametrize("kw, needle", [
    ({"client": ""}, "client id must be"),
    ({"client": "x" * 65}, "client id must be"),
    ({"seq": -1}, "seq must be an int"),
    ({"t_cap": float("nan")}, "t_cap must be"),
])
def test_bad_header_fields_raise(kw, needle):
    with Client(input=f"tcp://127.0.0.1:{free_port()}") as c, pytest.raises(ValueError, match=needle):
        c.send_frame(np.zeros((2, 2, 3), np.uint8), **kw)


def test_input_endpoint_rules(monkeypatch):
    with pytest.raises(ValueError, match="input"):
        Client(input="127.0.0.1:5557")
    monkeypatch.setenv("SFBRIDGE_INPUT", "tcp://127.0.0.1:99999")
    c = Client()  # a client that never sends frames is not refused over $SFBRIDGE_INPUT
    with pytest.raises(ValueError, match="SFBRIDGE_INPUT"):
        c.send_frame(np.zeros((2, 2, 3), np.uint8))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv("SFBRIDGE_INPUT", endpoint)
    with Client() as c2:
        c2.send_frame(np.zeros((2, 2, 3), np.uint8))
        assert c2.input_endpoint == endpoint
    with Client(input="ipc:///tmp/x") as c3:
        assert c3.input_endpoint == "ipc:///tmp/x"  # the argument wins over $SFBRIDGE_INPUT


def test_send_never_blocks_without_a_daemon():
    """Nobody listens: 200 full-size frames still leave the caller at once (the PUB drops them)."""
    img = np.zeros((480, 832, 3), np.uint8)
    with Client(input=f"tcp://127.0.0.1:{free_port()}") as c:
        t0 = time.monotonic()
        for _ in range(200):
            c.send_frame(img)
        per_frame_ms = 1000 * (time.monotonic() - t0) / 200
    assert per_frame_ms < 20, per_frame_ms


@pytest.mark.parametrize("args, needle", [
    (("on",), "mode must be one of off, v2v"),
    (("v2v", 1.5), "strength must be a number in 0..1"),
    (("v2v", True), "strength must be a number in 0..1"),
    (("v2v", 0.5, "yes"), "motion_adaptive must be True or False"),
    (("v2v", 0.5, False, 3, 1.0), "at_block or at_pts, not both"),
])
def test_input_args_refused(args, needle):
    with pytest.raises(ValueError, match=needle):
        input_args(*args)


def test_input_args_fields():
    assert input_args("v2v") == {"mode": "v2v", "strength": 0.7, "motion_adaptive": False}
    assert input_args("v2v", 0.4, True, at_block=9) == {"mode": "v2v", "strength": 0.4, "motion_adaptive": True,
                                                        "at_block": 9}


# --- against a real daemon ----------------------------------------------------------------------------------

def two_halves(w: int, h: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[: h // 2], img[h // 2:] = top, bottom
    return img


RED, BLUE = (230, 20, 20), (20, 20, 230)


def red_minus_blue(img: np.ndarray, y0: float, y1: float) -> float:
    h, w = img.shape[:2]
    region = img[int(y0 * h): int(y1 * h), w // 4: 3 * w // 4].astype(np.float64)
    return float((region[..., 0] - region[..., 2]).mean())


class Feeder:
    """Streams whatever ``picture`` holds at 16 fps from its own thread and Client, until stopped."""

    def __init__(self, **client_kw) -> None:
        import threading

        self.client = Client(**client_kw)
        self.picture: np.ndarray | bytes | None = None
        self.yielded = 0  # = the seq of the next frame: only this thread sends, from seq 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: self.client.stream_frames(self._frames()), daemon=True)
        self.thread.start()

    def _frames(self):
        while not self.stop.is_set():
            if self.picture is None:
                time.sleep(0.01)
                continue
            self.yielded += 1
            yield self.picture

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.client.close()


def frames_from_client(c: Client, client_id: str, min_seq: int, n: int, timeout: float = 20.0):
    out = []
    deadline = time.monotonic() + timeout
    for frame in c.subscribe("rgb24", timeout=5):
        src = frame.header.get("input")
        if src and src["client"] == client_id and src["seq"] >= min_seq:
            out.append(frame)
            if len(out) >= n:
                break
        if time.monotonic() > deadline:
            break
    return out


def test_send_frame_shows_in_testsrc_output(make_daemon):
    """v2v on: rgb24 (model size) and JPEG (twice the size) pictures show in the output the right way up, and
    frame headers name the input frame (this client, its seq, its t_cap); off: text-only again."""
    inp = f"tcp://127.0.0.1:{free_port()}"
    d = make_daemon(input=inp)
    cfg = d.config
    c = Client(control=cfg.control, frames=cfg.frames, timeout=3.0)
    feeder = Feeder(control=cfg.control, input=inp, client_id="py-input-test")
    try:
        reply = c.set_input("v2v", strength=0.5)
        assert reply["applies_at_block"] >= 0 and "state_id" in reply, reply
        w, h = 160, 96
        phases = [("A", two_halves(w, h, RED, BLUE), 1),
                  ("B", simplejpeg.encode_jpeg(two_halves(2 * w, 2 * h, BLUE, RED), 95), -1)]
        for name, picture, sign in phases:
            feeder.picture = picture
            first = feeder.yielded + 1  # the frame being sent may still carry the last picture
            frames = frames_from_client(c, "py-input-test", first, 8)
            assert len(frames) >= 3, (name, len(frames))
            top = np.mean([red_minus_blue(f.image, 0.1, 0.4) for f in frames])
            bottom = np.mean([red_minus_blue(f.image, 0.6, 0.9) for f in frames])
            assert sign * (top - bottom) > 40, (name, top, bottom)
            for f in frames:
                assert f.header["input_mode"] == "v2v"
                assert 0 < time.time() - f.header["input"]["t_cap"] < 10
        reply = c.set_input("off")
        for frame in c.subscribe("rgb24", timeout=5):
            if frame.header["block"] >= reply["applies_at_block"]:
                assert frame.header["input"] is None and frame.header["input_mode"] == "off"
                break
    finally:
        feeder.close()
        c.close()


def test_set_input_is_checked_by_the_daemon_too(make_daemon):
    d = make_daemon()
    with Client(control=d.config.control, timeout=3.0) as c:
        from sfbridge.client import RequestError

        with pytest.raises(RequestError, match="invalid_value"):
            c.request("input", mode="v2v", strength=2.0)
        reply = c.set_input("v2v", 0.3, motion_adaptive=True, at_block=40)
        assert reply["scheduled"] and reply["applies_at_block"] == 40
        assert c.cancel(reply["state_id"]) == {"cancelled": reply["state_id"]}


# --- the `sfbridge input` command ---------------------------------------------------------------------------

def sfbridge(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFBRIDGE_")}
    return subprocess.run([sys.executable, "-m", "sfbridge.cli", *args], capture_output=True, text=True, timeout=60,
                          env=env)


@pytest.mark.parametrize("args, needles", [
    (["input", "on"], ["must be one of off, v2v", "'on'"]),
    (["input", "v2v", "--strength", "1.5"], ["--strength", "0..1", "'1.5'"]),
    (["input", "v2v", "--strength", "nan"], ["--strength", "0..1", "'nan'"]),
    (["input", "v2v", "--at-block", "1", "--at-pts", "2"], ["--at-pts", "not allowed with"]),
    (["input", "v2v", "--at-block", str(2**31)], ["--at-block", "0..2147483647"]),
])
def test_input_command_refuses_bad_values(args, needles):
    r = sfbridge(*args, "--control", f"tcp://127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if "error:" in line and all(n in line for n in needles)]
    assert len(lines) == 1, r.stderr


def test_input_command_against_a_daemon(make_daemon):
    d = make_daemon()
    r = sfbridge("input", "v2v", "--strength", "0.4", "--motion-adaptive", "--at-block", "30", "--control",
                 d.config.control)
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["scheduled"] and reply["applies_at_block"] == 30
    r = sfbridge("input", "off", "--strength", "0.5", "--control", d.config.control)
    assert r.returncode == 0 and "--strength has no effect with mode off" in r.stderr, r.stderr
    r = sfbridge("input", "v2v", "--control", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.3")
    assert r.returncode == 3 and "error: no reply" in r.stderr, r.stderr


# --- sfbridge view --input-from ------------------------------------------------------------------------------

def write_video(path, w: int, h: int, n: int = 8) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for _ in range(n):
            frame = av.VideoFrame.from_ndarray(two_halves(w, h, RED, BLUE), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_view_input_from_file_shows_in_the_stream(tmp_path):
    """A looped file goes in at 16 fps, v2v is switched on, the window shows frames made from it."""
    from conftest import ServeProcess

    video = tmp_path / "in.mp4"
    write_video(video, 320, 180)  # 16:9 into a 5:3 stream: scaled to cover, then centre-cropped
    inp = f"tcp://127.0.0.1:{free_port()}"
    d = ServeProcess("--model", "testsrc", "--width", "160", "--height", "96", "--input", inp)
    shot = tmp_path / "shot.png"
    try:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SFBRIDGE_")}, "SDL_VIDEODRIVER": "dummy"}
        r = subprocess.run([sys.executable, "-m", "sfbridge.cli", "view", "--control", d.control, "--frames", d.frames,
                            "--input", inp, "--input-from", str(video), "--strength", "0.5", "--format", "rgb24",
                            "--no-overlay", "--screenshot", str(shot), "--screenshot-after", "48"],
                           capture_output=True, text=True, timeout=90, env=env)
        status = Client(control=d.control, timeout=3.0).status()
    finally:
        d.stop()
    assert r.returncode == 0, r.stderr
    header = json.loads(shot.with_name("shot.png.json").read_text())
    assert header["input_mode"] == "v2v" and header["input"]["client"], header
    import pygame

    img = pygame.surfarray.array3d(pygame.image.load(str(shot))).transpose(1, 0, 2)
    assert red_minus_blue(img, 0.1, 0.4) - red_minus_blue(img, 0.6, 0.9) > 40
    assert status["input"]["mode"] == "off", status["input"]  # the viewer switched v2v off when it closed
    assert header["input"]["client"] in status["input"]["clients"], status["input"]


@pytest.mark.parametrize("source, needle", [
    ("camera:9", "no camera at /dev/video9"),
    ("missing.mp4", "no such file"),
    ("README.md", "not a video"),
])
def test_view_input_from_bad_source(source, needle, make_daemon):
    d = make_daemon()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SFBRIDGE_")}, "SDL_VIDEODRIVER": "dummy"}
    r = subprocess.run([sys.executable, "-m", "sfbridge.cli", "view", "--control", d.config.control, "--frames",
                        d.config.frames, "--input-from", source, "--seconds", "1"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:") and needle in line]
    assert len(lines) == 1, r.stderr
