"""The Unity client's C# code, compiled with Mono's mcs and run against a real daemon.

- test_csharp_console_client: compiles clients/unity/Runtime/Core/*.cs (the dependency-free
  ZMTP + msgpack core) with the console program clients/unity/Tests~/ConsoleTest.cs, starts
  `sfbridge serve --model testsrc` as a subprocess on free ports and runs the program under
  mono. It checks msgpack (self-test and a cross-check with Python's msgpack both ways),
  control replies and errors, JPEG and rgb24 frames, events, a prompt change showing up as
  `state` in later frame headers, issue-10 steering (a weighted slerp blend, then a seed scheduled
  8 blocks ahead plus a prompt scheduled by scene time and cancelled: each reply's state_id,
  applies_at_block and scheduled, its `applied` event at exactly that block, frame headers changing
  `state` at that block, the cancelled one never landing), seed/steps/pause/resume/reset, then kills the daemon
  (SIGKILL), checks the control timeout, restarts the daemon on the same ports and checks that
  the client reconnected by itself, and finally a quick clean shutdown.
- test_csharp_input_sender_to_libzmq_sub / test_csharp_input_shows_in_testsrc (issue 12): the C#
  input sender (Runtime/Core/SfbridgeInputSender.cs, driven by Tests~/InputTest.cs) handshakes with a
  libzmq SUB and its messages decode as the documented [header, payload]; then, against a real
  `sfbridge serve --model testsrc --input ...` with v2v on, two generated pictures (RGB24 top-first at
  the model size; RGBA32 bottom-first at twice the size, as Unity's readback gives them) show in the
  received rgb24 pixels, right way up, in frames whose header `input` names the C# sender; the
  sender never exceeds 16 frames per second and drops queued frames when submitted faster.
- test_unity_scripts_compile: compiles the Unity-facing scripts (Runtime/Unity, the sample)
  against clients/unity/Tests~/UnityStubs.cs, a declarations-only stand-in for the UnityEngine
  API they use. This catches syntax and type errors only; Unity behaviour is not run in CI.

Needs `mcs` and `mono` (Debian: apt-get install -y --no-install-recommends mono-mcs).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq
from conftest import ServeProcess
from msgpack_samples import decode_sample, encoded_by_client

REPO = Path(__file__).resolve().parents[1]
UNITY = REPO / "clients" / "unity"
W, H = 160, 96

MCS = shutil.which("mcs")
MONO = shutil.which("mono")
needs_mono = pytest.mark.skipif(
    MCS is None or MONO is None,
    reason="!!! mcs/mono not installed: C# client NOT tested (apt-get install -y --no-install-recommends mono-mcs) !!!",
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compile(out: Path, sources: list[Path], target: str = "exe", extra: tuple[str, ...] = ()) -> None:
    # mcs 6.8 accepts -langversion up to 7.2, a subset of the C# 7.3 that Unity compiles.
    cmd = [MCS, "-langversion:7.2", "-warnaserror+", f"-target:{target}", f"-out:{out}", *extra]
    cmd += [str(s) for s in sources]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"mcs failed:\n{r.stdout}\n{r.stderr}"


def _console_program(test: str) -> list[Path]:
    """Sources of a console test program: the C# core, the helpers the tests share, and the test itself."""
    tests = UNITY / "Tests~"
    return sorted((UNITY / "Runtime" / "Core").glob("*.cs")) + [tests / "TestSupport.cs", tests / test]


def Daemon(control: str, frames: str, log: Path) -> ServeProcess:  # noqa: N802 - reads like the class it was
    """`sfbridge serve --model testsrc` at W x H on fixed endpoints, restartable (start/kill/stop)."""
    return ServeProcess("--model", "testsrc", "--width", str(W), "--height", str(H),
                        control=control, frames=frames, log=log, start=False)


def read_lines(proc: subprocess.Popen, on_line, kill_after: float = 150) -> tuple[int, list[str]]:
    """Reads a client test program's stdout line by line (on_line(line) reacts to each, e.g. by
    restarting the daemon), killing it after kill_after seconds. Returns (exit code, lines)."""
    out: list[str] = []
    timer = threading.Timer(kill_after, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            out.append(line)
            on_line(line)
        return proc.wait(30), out
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}", tmp_path / "daemon.log")
    d.start()
    yield d
    d.stop()


@needs_mono
def test_csharp_console_client(tmp_path, daemon):
    exe = tmp_path / "ConsoleTest.exe"
    t0 = time.monotonic()
    _compile(exe, _console_program("ConsoleTest.cs"))
    compile_s = time.monotonic() - t0

    sample = decode_sample(u64=2**63 + 5, fix=5)  # uint64 above 2**63: C# has ulong
    packed = msgpack.packb(sample)
    assert packed[0] == 0xDE  # map16
    jpeg_out = tmp_path / "frame.jpg"
    cmd = [
        MONO,
        "--debug",
        str(exe),
        "--control",
        daemon.control,
        "--frames",
        daemon.frames,
        "--width",
        str(W),
        "--height",
        str(H),
        "--save-jpeg",
        str(jpeg_out),
        "--msgpack-hex",
        packed.hex(),
        "--restart",
    ]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    stderr_lines: list[str] = []
    threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True).start()

    def on_line(line: str) -> None:
        if line.startswith("READY_FOR_RESTART"):
            daemon.kill()
            proc.stdin.write("DOWN\n")
            proc.stdin.flush()
        elif line == "WAITING_UP":
            daemon.start()
            proc.stdin.write("UP\n")
            proc.stdin.flush()

    rc, out = read_lines(proc, on_line)
    text = "\n".join(out)
    diag = f"stdout:\n{text}\nstderr (last 40):\n{''.join(stderr_lines[-40:])}"
    assert rc == 0 and "ALL_OK" in out, diag
    ok = {line.split()[1]: line for line in out if line.startswith("OK ")}
    for name in [
        "msgpack_selftest",
        "msgpack_crosscheck",
        "status",
        "ping",
        "error_unknown_op",
        "error_invalid_value",
        "jpeg_frames",
        "rgb24_frames",
        "events",
        "prompt_state",
        "steering_args",
        "weighted_blend",
        "scheduled_change",
        "seed",
        "steps_not_supported",
        "pause_resume",
        "reset",
        "noticed_down",
        "control_timeout",
        "reconnected",
        "shutdown",
    ]:
        assert name in ok, f"missing check {name}\n{diag}"
    assert "applied_event seen" in ok["applied_event"], diag

    # msgpack both ways against Python's implementation.
    decoded = next(line for line in out if line.startswith("MSGPACK_DECODED "))
    for frag in [
        "u8: 200",
        "u16: 60000",
        "u32: 4000000000",
        f"u64: {2**63 + 5}",
        "i8: -100",
        "i16: -30000",
        "i32: -2000000000",
        f"i64: {-(2**40)}",
        "nfix: -3",
        "f64: 0.1",
        "t: true",
        "f: false",
        "n: null",
        's: "héllo"',
        "b: <bin 3>",
        'a: [1, [2, {x: "y"}]]',
        "m: {k: 1.5}",
    ]:
        assert frag in decoded, f"{frag!r} not in {decoded}"
    enc = bytes.fromhex(next(line for line in out if line.startswith("MSGPACK_ENCODED ")).split()[1])
    assert msgpack.unpackb(enc) == encoded_by_client(f32=0.25)

    # The saved frame is a real JPEG of the requested size (decoded here with simplejpeg).
    import simplejpeg

    data = jpeg_out.read_bytes()
    img = simplejpeg.decode_jpeg(data)
    assert img.shape == (H, W, 3)
    print(f"\ncompile {compile_s:.1f}s\n{text}")


@needs_mono
def test_unity_scripts_compile(tmp_path):
    """Type-check the UnityEngine-facing code against declaration stubs (not a Unity run)."""
    sources = sorted((UNITY / "Runtime").rglob("*.cs")) + sorted((UNITY / "Samples~").rglob("*.cs"))
    sources.append(UNITY / "Tests~" / "UnityStubs.cs")
    assert any(p.parent.name == "Unity" for p in sources)
    # Also type-check the sample's legacy-input branch.
    _compile(tmp_path / "SfbridgeUnity.dll", sources, target="library", extra=("-define:ENABLE_LEGACY_INPUT_MANAGER",))


def test_core_has_no_unity_dependency():
    """Runtime/Core must compile without UnityEngine (it is what the console test runs)."""
    for p in (UNITY / "Runtime" / "Core").glob("*.cs"):
        src = p.read_text(encoding="utf-8")
        assert "using UnityEngine" not in src and "UnityEngine." not in src, p


def test_unity_package_layout():
    """Git-URL packages are immutable in Unity: every asset outside `~` folders needs a .meta."""
    import json

    pkg = json.loads((UNITY / "package.json").read_text())
    assert pkg["name"] == "com.sfbridge.client"
    guids = set()
    for p in UNITY.rglob("*"):
        rel = p.relative_to(UNITY)
        if any(part.endswith("~") or part.startswith(".") for part in rel.parts) or p.suffix == ".meta":
            continue
        meta = p.with_name(p.name + ".meta")
        assert meta.is_file(), f"missing {meta.relative_to(REPO)}"
        guid = next(line.split()[1] for line in meta.read_text().splitlines() if line.startswith("guid:"))
        assert guid not in guids, f"duplicate guid in {meta}"
        guids.add(guid)
    for asmdef in UNITY.rglob("*.asmdef"):
        json.loads(asmdef.read_text())


def heartbeat_publisher(endpoint_holder: list, stop: threading.Event, ready: threading.Event) -> None:
    """A libzmq XPUB that PINGs every 100 ms and drops peers silent for 400 ms."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.HEARTBEAT_IVL, 100)
    pub.setsockopt(zmq.HEARTBEAT_TIMEOUT, 400)
    pub.setsockopt(zmq.HEARTBEAT_TTL, 1000)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    endpoint_holder.append(f"tcp://127.0.0.1:{port}")
    ready.set()
    import numpy as np
    import simplejpeg

    jpeg = simplejpeg.encode_jpeg(np.zeros((8, 8, 3), np.uint8), 90, colorsubsampling="420")
    seq = 0
    try:
        while not stop.is_set():
            while pub.poll(0):
                pub.recv()
            hdr = {
                "v": 1,
                "stream": "hb",
                "seq": seq,
                "w": 8,
                "h": 8,
                "format": "jpeg",
                "state": 1,
                "t_pub": time.time(),
            }
            # Publish rarely (every 1.5 s): between frames only heartbeats keep the link alive.
            pub.send_multipart([b"jpeg", msgpack.packb(hdr), jpeg])
            seq += 1
            stop.wait(1.5)
    finally:
        pub.close()


@needs_mono
def test_csharp_answers_zmtp_ping(tmp_path):
    """The C# ZMTP code answers libzmq's PING with PONG, so heartbeating peers keep the connection."""
    exe = tmp_path / "ConsoleTest.exe"
    _compile(exe, _console_program("ConsoleTest.cs"))
    holder: list[str] = []
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(target=heartbeat_publisher, args=(holder, stop, ready), daemon=True)
    t.start()
    assert ready.wait(5)
    try:
        r = subprocess.run(
            [MONO, str(exe), "--frames", holder[0], "--heartbeat-seconds", "4"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        stop.set()
        t.join(5)
    assert r.returncode == 0 and "OK heartbeat" in r.stdout, r.stdout + r.stderr


def _compile_input_test(tmp_path: Path) -> Path:
    exe = tmp_path / "InputTest.exe"
    _compile(exe, _console_program("InputTest.cs"))
    return exe


@needs_mono
def test_csharp_input_sender_to_libzmq_sub(tmp_path):
    """The C# PUB handshakes with libzmq's SUB; each message is [msgpack header, rgb24 payload]."""
    exe = _compile_input_test(tmp_path)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    try:
        r = subprocess.run([MONO, str(exe), "--input", f"tcp://127.0.0.1:{port}", "--send-only", "6",
                            "--width", "40", "--height", "24"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "OK send_only" in r.stdout, r.stdout + r.stderr
        msgs = []
        while sub.poll(500):
            msgs.append(sub.recv_multipart())
    finally:
        sub.close()
    assert len(msgs) == 6, len(msgs)
    for i, (raw, payload) in enumerate(msgs):
        header = msgpack.unpackb(raw)
        assert header == {"format": "rgb24", "w": 40, "h": 24, "t_cap": 1000.0 + i, "client": "csharp-input-test",
                          "seq": i}
        assert payload == bytes([i]) * (40 * 24 * 3)


@needs_mono
def test_csharp_input_shows_in_testsrc(tmp_path):
    exe = _compile_input_test(tmp_path)
    inp = f"tcp://127.0.0.1:{_free_port()}"
    d = ServeProcess("--model", "testsrc", "--width", str(W), "--height", str(H), "--input", inp,
                     log=tmp_path / "daemon.log")
    try:
        r = subprocess.run([MONO, "--debug", str(exe), "--control", d.control, "--frames", d.frames, "--input", inp,
                            "--width", str(W), "--height", str(H)], capture_output=True, text=True, timeout=120)
    finally:
        d.stop()
    out = r.stdout
    assert r.returncode == 0 and "ALL_OK" in out, out + r.stderr[-3000:] + d.output()[-3000:]
    for name in ("encode", "input_reply", "input_shows_A", "input_shows_B", "rate_limited", "round_trip", "input_off"):
        assert f"OK {name}" in out, out
    print("\n" + out)
