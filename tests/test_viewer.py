"""``sfbridge view`` against a real ``sfbridge serve --model testsrc`` subprocess.

The viewer runs as a subprocess, as a user would start it. Pixel checks compare what the
viewer shows with the rgb24 frame of the same ``seq``, which a collector thread in the test
receives from the same daemon: exact pixels for ``--format rgb24``, JPEG loss only for jpeg.
Both SDL's dummy video driver (no X needed, so this file never skips entirely) and a real X
server (Xvfb, when installed) are exercised.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import REPO, ServeProcess, free_port
from PIL import Image

from sfbridge.client import Client
from sfbridge.protocol import unpack

W, H = 256, 160
VIEW = [sys.executable, "-c", "import sys; from sfbridge.cli import main; sys.exit(main())"]
XVFB_HINT = "apt-get install -y --no-install-recommends xvfb imagemagick x11-apps xauth"


@pytest.fixture(scope="module")
def serve() -> Iterator[ServeProcess]:
    proc = ServeProcess("--model", "testsrc", "--width", str(W), "--height", str(H))
    yield proc
    proc.stop()


class Collector(threading.Thread):
    """Subscribes rgb24 and keeps the most recent frames by seq (the reference pixels)."""

    def __init__(self, endpoint: str, keep: int = 150) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.keep = endpoint, keep
        self.frames: OrderedDict[int, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"rgb24")
        sock.connect(self.endpoint)
        try:
            while not self.halt.is_set():
                if not sock.poll(50, zmq.POLLIN):
                    continue
                topic, header, payload = sock.recv_multipart()[:3]
                h = unpack(header)
                img = np.frombuffer(payload, dtype=np.uint8).reshape(h["h"], h["w"], 3)
                with self.lock:
                    self.frames[int(h["seq"])] = img
                    while len(self.frames) > self.keep:
                        self.frames.popitem(last=False)
                self.ready.set()
        finally:
            sock.close()

    def get(self, seq: int) -> np.ndarray:
        with self.lock:
            if seq not in self.frames:
                pytest.fail(f"collector has no rgb24 frame seq {seq} (has {list(self.frames)[:3]}..."
                            f"{list(self.frames)[-3:]})")
            return self.frames[seq]

    def newest(self, n: int) -> list[tuple[int, np.ndarray]]:
        with self.lock:
            return list(self.frames.items())[-n:]


@pytest.fixture
def collector(serve: ServeProcess) -> Iterator[Collector]:
    c = Collector(serve.frames)
    c.start()
    assert c.ready.wait(10), "no rgb24 frames from the daemon"
    yield c
    c.halt.set()
    c.join(2)


@pytest.fixture(scope="module")
def xvfb() -> Iterator[str]:
    """A private X server on a display number Xvfb picks itself (-displayfd): no clashes."""
    if shutil.which("Xvfb") is None:
        pytest.skip(f"Xvfb NOT INSTALLED: the X11 viewer tests did not run ({XVFB_HINT})")
    r, w = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1024x600x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(w)
    with os.fdopen(r) as f:
        number = f.readline().strip()
    if not number:
        proc.kill()
        pytest.fail(f"Xvfb did not start: {proc.stderr.read().decode(errors='replace')[-2000:]}")
    yield f":{number}"
    proc.terminate()
    proc.wait(5)


def view_env(display: str | None) -> dict[str, str]:
    env = {**os.environ, "SDL_AUDIODRIVER": "dummy", "PYGAME_HIDE_SUPPORT_PROMPT": "1",
           "SDL_VIDEO_WINDOW_POS": "0,0"}
    if display is None:
        env["SDL_VIDEODRIVER"] = "dummy"
    else:
        env["SDL_VIDEODRIVER"] = "x11"
        env["DISPLAY"] = display
    return env


def run_view(serve: ServeProcess, display: str | None, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    cmd = [*VIEW, "view", "--control", serve.control, "--frames", serve.frames, *args]
    res = subprocess.run(cmd, env=view_env(display), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"view exited {res.returncode}\nstdout:{res.stdout}\nstderr:{res.stderr}"
    return res


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def screenshot_case(serve: ServeProcess, collector: Collector, display: str | None, fmt: str,
                    tmp_path: Path) -> float:
    shot = tmp_path / f"shot-{fmt}.png"
    run_view(serve, display, "--screenshot", str(shot), "--screenshot-after", "3", "--no-overlay",
             "--format", fmt, "--size", f"{W}x{H}")
    header = json.loads(Path(f"{shot}.json").read_text())
    assert header["format"] == fmt and (header["w"], header["h"]) == (W, H)
    return mean_abs_diff(load_rgb(shot), collector.get(int(header["seq"])))


@pytest.mark.parametrize("fmt, limit", [("jpeg", 6.0), ("rgb24", 0.0)])
def test_screenshot_dummy_driver(serve, collector, tmp_path, fmt, limit):
    """No X needed: the window surface equals the frame with the header's seq."""
    diff = screenshot_case(serve, collector, None, fmt, tmp_path)
    assert diff <= limit, f"{fmt}: mean abs diff {diff:.2f} > {limit}"


def test_screenshot_xvfb(serve, collector, xvfb, tmp_path):
    diff = screenshot_case(serve, collector, xvfb, "jpeg", tmp_path)
    assert diff <= 6.0, f"mean abs diff {diff:.2f}"


def test_x_screen_shows_stream(serve, collector, xvfb, tmp_path):
    """A real X screenshot (not pygame's surface) shows the newest frame while the stream is paused."""
    if shutil.which("import") is None:
        pytest.skip(f"ImageMagick `import` NOT INSTALLED: X screenshot not checked ({XVFB_HINT})")
    cmd = [*VIEW, "--log-level", "info", "view", "--control", serve.control, "--frames", serve.frames,
           "--no-overlay", "--seconds", "25"]
    proc = subprocess.Popen(cmd, env=view_env(xvfb), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    shown = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "first frame shown" in line:
                shown.set()

    threading.Thread(target=read, daemon=True).start()
    client = Client(control=serve.control, timeout=3.0)
    try:
        assert shown.wait(20), "viewer showed no frame:\n" + "".join(lines)
        time.sleep(0.5)
        client.pause()
        time.sleep(0.8)  # the last frame reaches the viewer and is drawn (it redraws at 120 Hz max)
        for attempt in range(3):  # a loaded CI machine may draw the last frame late
            shot = tmp_path / f"xroot{attempt}.png"
            subprocess.run(["import", "-display", xvfb, "-window", "root", str(shot)], check=True, timeout=20)
            screen = load_rgb(shot)
            window = screen[:H, :W]
            diffs = [(seq, mean_abs_diff(window, img)) for seq, img in collector.newest(3)]
            best = min(d for _, d in diffs)
            if best <= 8.0:
                break
            time.sleep(1.0)
        assert best <= 8.0, f"X screen top-left {W}x{H} differs from the newest frames: {diffs}"
        assert screen[H + 10:, W + 10:].max() == 0, "something drawn outside the window"
    finally:
        client.resume()
        client.close()
        proc.terminate()
        proc.wait(10)


def test_prompt_box_sends_prompt(serve, collector, tmp_path):
    """Text typed into the prompt box (real pygame events) reaches the daemon and shows on screen."""
    text = f"a red fox in the snow {uuid.uuid4().hex[:6]}"
    shot = tmp_path / "prompt.png"
    res = run_view(serve, None, "--screenshot", str(shot), "--no-overlay", "--type-prompt", text)
    header = json.loads(Path(f"{shot}.json").read_text())
    with Client(control=serve.control, timeout=3.0) as client:
        status = client.status()
    assert status["prompt"] == text
    assert header["state"] >= 1
    assert header["state"] == status["state_id"], (header, status["state_id"], res.stderr)
    # The shown frame is the daemon's frame of that seq, i.e. one rendered with the new prompt.
    assert mean_abs_diff(load_rgb(shot), collector.get(int(header["seq"]))) <= 6.0


def test_daemon_missing_exit_3(tmp_path):
    cmd = [*VIEW, "view", "--control", f"tcp://127.0.0.1:{free_port()}", "--frames",
           f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.3", "--screenshot", str(tmp_path / "x.png")]
    res = subprocess.run(cmd, env=view_env(None), cwd=REPO, capture_output=True, text=True, timeout=30)
    assert res.returncode == 3, res
    assert "error: no reply from sfbridge daemon" in res.stderr
    assert not (tmp_path / "x.png").exists()


def test_cli_import_does_not_load_pygame():
    """The CLI imports sfbridge.viewer on every command; pygame must stay out until `view` runs."""
    code = ("import sys; from sfbridge.cli import _load_extra_commands, build_parser; _load_extra_commands(); "
            "build_parser().parse_args(['view', '--size', '320x200']); print('pygame' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_fit_rect_and_size():
    from sfbridge.viewer import fit_rect, parse_size

    assert fit_rect((256, 160), (256, 160)) == (0, 0, 256, 160)
    assert fit_rect((256, 160), (512, 400)) == (0, 40, 512, 320)  # letterbox top/bottom
    assert fit_rect((256, 160), (1000, 320)) == (244, 0, 512, 320)  # pillarbox left/right
    assert parse_size("832x480") == (832, 480)
    with pytest.raises(Exception, match="WxH"):
        parse_size("832")
