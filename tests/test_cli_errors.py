"""Everything a user can type ends in one clear error line and a non-zero exit, never a traceback.

Each case runs the installed ``sfbridge`` command as a subprocess, as a user would, and checks
the exit code, that stderr has no ``Traceback``, and that one stderr line names the offending
option or variable and its value. One testsrc daemon serves the cases that need a stream.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from conftest import REPO, ServeProcess, free_port, sigint_default

from sfbridge.client import Client

_SCRIPT = Path(sys.executable).with_name("sfbridge")
SFBRIDGE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "sfbridge.cli"]
DEAD = f"tcp://127.0.0.1:{free_port()}"  # nobody listens here
BAD_ENV = {"SFBRIDGE_SEED": "abc", "SFBRIDGE_LOG_LEVEL": "verbose", "SFBRIDGE_PACE": "fast",
           "SFBRIDGE_MODEL": "nope", "SFBRIDGE_CONTROL": "127.0.0.1:5555", "SFBRIDGE_FRAMES": "tcp://h:0"}
CLIENT_COMMANDS = [["status"], ["prompt", "a cat"], ["seed", "1"], ["steps", "1000"], ["cancel", "1"], ["pause"],
                   ["resume"], ["ping"], ["reset"], ["record", "out.mp4"], ["view"]]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFBRIDGE_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def sfb(*args: str, env: dict[str, str] | None = None, timeout: float = 30,
        cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([*SFBRIDGE, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env or clean_env())


def assert_error(r: subprocess.CompletedProcess, *needles: str, code: int | None = None) -> str:
    """Non-zero exit, no traceback, and one ``error:`` line on stderr holding every needle; returns it."""
    assert r.returncode != 0, (r.returncode, r.stdout, r.stderr)
    if code is not None:
        assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if "error:" in line and all(n in line for n in needles)]
    assert len(lines) == 1, (needles, r.stderr)
    return lines[0]


@pytest.fixture(scope="module")
def served() -> Iterator[ServeProcess]:
    # Model-only options on testsrc: accepted with a warning (checked below), the daemon still serves.
    p = ServeProcess("--model", "testsrc", "--width", "64", "--height", "48", "--decoder", "vae", "--dtype", "fp16")
    yield p
    p.stop()


def on(p: ServeProcess) -> list[str]:
    return ["--control", p.control, "--frames", p.frames]


# --- values -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needles", [
    (["seed", "99999999999999999999"], ["seed", "99999999999999999999", "0..2^63-1"]),
    (["reset", "--seed", "-1"], ["--seed", "'-1'", "0..2^63-1"]),
    (["serve", "--seed", str(2**63)], ["--seed", str(2**63), "0..2^63-1"]),
    (["steps", "99999999999999999999"], ["steps", "99999999999999999999", "1..1000"]),
    (["serve", "--model", "nope"], ["--model", "unknown model 'nope'", "testsrc"]),
    (["serve", "--width", "833", "--height", "481", "--control", DEAD], ["--width 833", "even"]),
    (["serve", "--height", "481", "--control", DEAD], ["--height 481", "even"]),
    (["prompt", "a cat", "--transition", "blend", "--blend-blocks", "0", "--control", DEAD],
     ["--blend-blocks", "1..64", "got 0"]),
    # issue 10: weighted prompts, transitions, scheduling, cancel (all refused before any request)
    (["prompt", "a", "b", "--weights", "1", "--control", DEAD], ["--weights", "1 value for 2 TEXTs"]),
    (["prompt", "a", "b", "--weights", "0", "0", "--control", DEAD], ["--weights 0 0", "> 0"]),
    (["prompt", "a", "--weights", "-1", "--control", DEAD], ["--weights", "'-1'", ">= 0"]),
    (["prompt", "a", "--weights", "nan", "--control", DEAD], ["--weights", "'nan'"]),
    (["prompt", "a", "--mix", "slerp", "--control", DEAD], ["--mix", "two or more TEXTs"]),
    (["prompt", "a", "b", "c", "--mix", "slerp", "--control", DEAD], ["--mix slerp", "exactly 2", "got 3"]),
    (["prompt", "a", "b", "--mix", "cubic", "--control", DEAD], ["--mix", "linear, slerp", "'cubic'"]),
    (["prompt", "a", "--interp", "cubic", "--control", DEAD], ["--interp", "linear, slerp", "'cubic'"]),
    (["prompt", "a", "--blend", "0", "--control", DEAD], ["--blend", "1..64", "'0'"]),
    (["prompt", "a", "--blend", "65", "--control", DEAD], ["--blend", "1..64", "'65'"]),
    (["prompt", "a", "--blend", "3", "--transition", "cut", "--control", DEAD], ["--blend 3", "--transition cut"]),
    (["prompt", "a", "--blend", "3", "--blend-blocks", "5", "--control", DEAD], ["--blend 3", "--blend-blocks 5"]),
    (["prompt", "a", "--at-block", "-1", "--control", DEAD], ["--at-block", "'-1'", ">= 0"]),
    (["prompt", "a", "--at-pts", "-0.5", "--control", DEAD], ["--at-pts", "'-0.5'", ">= 0"]),
    (["prompt", "a", "--at-block", "3", "--at-pts", "1", "--control", DEAD], ["--at-pts", "--at-block"]),
    (["prompt", "a", "", "--control", DEAD], ["TEXT 2 of 2 is empty"]),
    (["prompt", *"abcdefghi", "--control", DEAD], ["9 TEXTs", "at most 8"]),
    (["prompt", "x" * 4001, "--control", DEAD], ["text has 4001 characters", "max 4000"]),
    (["seed", "1", "--at-block", "x", "--control", DEAD], ["--at-block", "'x'"]),
    (["seed", "1", "--at-block", "2", "--at-pts", "1", "--control", DEAD], ["--at-pts", "--at-block"]),
    (["steps", "1000", "--at-pts", "inf", "--control", DEAD], ["--at-pts", "'inf'"]),
    (["seed", "1", "--at-block", str(2**31), "--control", DEAD], ["--at-block", "0..2147483647", str(2**31)]),
    (["prompt", "a", "--at-pts", "1e9", "--control", DEAD], ["--at-pts", "0..1e+08"]),
    (["cancel", "-3", "--control", DEAD], ["STATE_ID", "'-3'", ">= 0"]),
    (["cancel", "abc", "--control", DEAD], ["STATE_ID", "'abc'"]),
])
def test_bad_values(args, needles):
    assert_error(sfb(*args), *needles)


def test_seed_range_matches_the_daemon():
    from sfbridge.protocol import MAX_SEED

    assert MAX_SEED == 2**63 - 1
    assert_error(sfb("seed", str(MAX_SEED + 1)), "0..2^63-1")


# --- SFBRIDGE_* variables ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["status", "--help"], ["record", "--help"]])
def test_bad_environment_does_not_break_help(args):
    r = sfb(*args, env=clean_env(**BAD_ENV))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "usage:" in r.stdout


@pytest.mark.parametrize("var, value, args, needles", [
    ("SFBRIDGE_SEED", "abc", ["serve"], ["0..2^63-1"]),
    ("SFBRIDGE_SEED", "99999999999999999999", ["serve"], ["0..2^63-1"]),
    ("SFBRIDGE_LOG_LEVEL", "verbose", ["ping"], ["debug, info, warning, error"]),
    ("SFBRIDGE_PACE", "fast", ["serve"], ["native, off"]),
    ("SFBRIDGE_MODEL", "nope", ["serve"], ["unknown model", "testsrc"]),
    ("SFBRIDGE_CONTROL", "127.0.0.1:5555", ["ping"], ["no scheme", "tcp://HOST:PORT"]),
    ("SFBRIDGE_FRAMES", "tcp://127.0.0.1:99999", ["record", "out.mp4"], ["1..65535"]),
])
def test_bad_environment_names_the_variable(var, value, args, needles):
    assert_error(sfb(*args, env=clean_env(**{var: value})), var, value, *needles, code=2)


def test_unrelated_bad_variable_is_not_read():
    """SFBRIDGE_SEED belongs to serve: `reset` without --seed neither reads it nor fails on it."""
    r = sfb("reset", "--control", DEAD, "--timeout", "0.2", env=clean_env(SFBRIDGE_SEED="abc"))
    assert r.returncode == 3 and "SFBRIDGE_SEED" not in r.stderr, r.stderr


# --- endpoints --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cmd", [["serve"], *CLIENT_COMMANDS], ids=lambda c: c[0])
def test_endpoint_without_scheme_in_every_command(cmd):
    assert_error(sfb(*cmd, "--control", "127.0.0.1:5555", timeout=20), "--control", "'127.0.0.1:5555'",
                 "no scheme", code=2)


@pytest.mark.parametrize("args, needles", [
    (["serve", "--frames", "tcp://127.0.0.1:99999"], ["--frames", "99999", "1..65535"]),
    (["serve", "--control", "tcp://127.0.0.1:0"], ["--control", "'0'", "1..65535"]),
    (["serve", "--control", "tcp://:5555"], ["--control", "no host"]),
    (["serve", "--control", "udp://127.0.0.1:5555"], ["--control", "unknown scheme 'udp'"]),
    (["serve", "--control", "tcp://127.0.0.1:7001", "--frames", "tcp://127.0.0.1:7001"],
     ["--control and --frames", "tcp://127.0.0.1:7001"]),
    (["record", "out.mp4", "--control", "ipc:///tmp/x", "--frames", "ipc:///tmp/x"], ["--control and --frames"]),
    (["view", "--control", "tcp://127.0.0.1:7001", "--frames", "tcp://127.0.0.1:7001"], ["--control and --frames"]),
    (["status", "--control", "tcp://127.0.0.1:99999"], ["--control", "1..65535"]),
])
def test_bad_endpoints(args, needles):
    assert_error(sfb(*args, timeout=20), *needles, code=2)


# --- --timeout ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cmd", CLIENT_COMMANDS, ids=lambda c: c[0])
def test_timeout_must_be_positive(cmd):
    assert_error(sfb(*cmd, "--timeout", "0"), "--timeout", "0", code=2)


# --- record -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needles", [
    (["missing-dir/out.mp4"], ["missing-dir", "does not exist"]),
    (["out.webm"], ["out.webm", "H.264", ".mp4"]),
    (["out"], ["out", "no file extension", ".mp4"]),
    (["out.mp4", "--seconds", "0"], ["--seconds", "'0'", "> 0"]),
    (["out.mp4", "--seconds", "-3"], ["--seconds", "'-3'", "> 0"]),
    (["out.mp4", "--seconds", "nan"], ["--seconds", "'nan'"]),
    (["out.mp4", "--crf", "52"], ["--crf", "'52'", "0..51"]),
    (["out.mp4", "--crf", "-1"], ["--crf", "'-1'", "0..51"]),
    (["out.mp4", "--wait", "0"], ["--wait", "'0'"]),
])
def test_record_bad_settings(args, needles, tmp_path):
    # No daemon is needed: everything here is refused before the first request.
    r = sfb("record", *args, "--control", DEAD, "--frames", f"tcp://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert_error(r, *needles)
    assert list(tmp_path.iterdir()) == []


def test_record_while_paused_says_so(served, tmp_path):
    with Client(control=served.control, frames=served.frames, timeout=3.0) as c:
        c.pause()
        try:
            r = sfb("record", str(tmp_path / "p.mp4"), "--seconds", "2", "--wait", "1", *on(served))
        finally:
            c.resume()
    assert_error(r, "paused", "sfbridge resume", code=1)


def test_record_ctrl_c_finalises_the_file(served, tmp_path):
    out = tmp_path / "int.mp4"
    proc = subprocess.Popen([*SFBRIDGE, "record", str(out), "--seconds", "60", *on(served)], cwd=REPO,
                            env=clean_env(PYTHONFAULTHANDLER="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=sigint_default)
    deadline = time.monotonic() + 30
    while not (out.exists() and out.stat().st_size > 0) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)  # the file appears with the first encoded packets
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # still recording: SIGABRT makes faulthandler show where every thread is
        proc.send_signal(signal.SIGABRT)
        stdout, stderr = proc.communicate(timeout=30)
        pytest.fail(f"record ran on after Ctrl-C; its threads:\n{stderr[-6000:]}")
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and "interrupted: wrote" in stderr, stderr
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) >= 8 and frames[0].shape == (48, 64, 3)


def test_record_odd_sized_stream_is_refused(make_daemon, tmp_path):
    """`serve` refuses odd sizes; a daemon started from Python may still have one: record says why."""
    d = make_daemon(model_options={"width": 65, "height": 49})
    r = sfb("record", str(tmp_path / "odd.mp4"), "--seconds", "1", "--control", d.config.control,
            "--frames", d.config.frames)
    assert_error(r, "65x49", "even", code=1)
    assert not (tmp_path / "odd.mp4").exists()


# --- pipes, display, warnings ------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["status"], ["doctor", "--json"]], ids=["status", "doctor"])
def test_closed_stdout_exits_quietly(served, args):
    """`sfbridge status | head`: the reader is gone before we write; stop like a Unix filter (SIGPIPE's 141)."""
    extra = ["--control", served.control] if args[0] == "status" else []
    proc = subprocess.Popen([*SFBRIDGE, *args, *extra], cwd=REPO, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader quits at once
    stderr = proc.stderr.read()
    proc.wait(60)
    assert proc.returncode == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr and "Exception ignored" not in stderr, stderr


def test_view_without_display_says_so(tmp_path):
    env = {k: v for k, v in clean_env().items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    r = sfb("view", "--control", DEAD, "--timeout", "0.2", env=env)
    assert_error(r, "no display", "DISPLAY", "--screenshot", code=1)
    # With --screenshot there is nothing to show on: it goes on (here to the missing daemon).
    r = sfb("view", "--control", DEAD, "--timeout", "0.2", "--screenshot", str(tmp_path / "s.png"), env=env)
    assert_error(r, "no reply from sfbridge daemon", code=3)


def test_model_only_options_warn_with_testsrc(served):
    out = served.output()
    assert "--decoder has no effect with --model testsrc" in out and "--dtype has no effect" in out, out
    assert "Traceback" not in out


def test_blend_blocks_ignored_for_a_cut(served):
    r = sfb("prompt", "a quiet harbour", "--blend-blocks", "0", "--control", served.control)
    assert r.returncode == 0, r.stderr
    assert "--blend-blocks has no effect with --transition cut" in r.stderr


def test_interp_ignored_for_a_cut(served):
    """--interp is the path of a blend: with a cut it is sent (the daemon reports it) but warned about."""
    r = sfb("prompt", "a quiet harbour", "--interp", "slerp", "--control", served.control)
    assert r.returncode == 0, r.stderr
    assert "--interp has no effect with --transition cut" in r.stderr


# --- Python entry points -----------------------------------------------------------------------------------

def test_python_client_reads_the_environment(monkeypatch):
    from sfbridge import AsyncClient
    from sfbridge import Client as TopClient

    monkeypatch.setenv("SFBRIDGE_CONTROL", "tcp://127.0.0.1:7101")
    monkeypatch.setenv("SFBRIDGE_FRAMES", "ipc:///tmp/sfbridge-frames")
    for cls in (TopClient, AsyncClient):
        c = cls()
        assert (c.control_endpoint, c.frames_endpoint) == ("tcp://127.0.0.1:7101", "ipc:///tmp/sfbridge-frames")
        c = cls(control="tcp://127.0.0.1:7201", frames="tcp://127.0.0.1:7202")  # arguments win
        assert (c.control_endpoint, c.frames_endpoint) == ("tcp://127.0.0.1:7201", "tcp://127.0.0.1:7202")
    monkeypatch.setenv("SFBRIDGE_CONTROL", "localhost:5555")
    with pytest.raises(ValueError, match="SFBRIDGE_CONTROL 'localhost:5555' has no scheme"):
        TopClient()


@pytest.mark.parametrize("kw, match", [
    ({"control": "127.0.0.1:5555"}, "control '127.0.0.1:5555' has no scheme"),
    ({"frames": "tcp://127.0.0.1:70000"}, "frames 'tcp://127.0.0.1:70000': port '70000'"),
    ({"control": "tcp://127.0.0.1:7001", "frames": "tcp://127.0.0.1:7001"}, "control and frames are both"),
])
def test_python_client_rejects_bad_endpoints(kw, match):
    from sfbridge import AsyncClient
    from sfbridge import Client as TopClient

    for cls in (TopClient, AsyncClient):
        with pytest.raises(ValueError, match=match):
            cls(**kw)


def test_python_client_checks_seed_before_sending():
    from sfbridge import Client as TopClient

    with TopClient(control=DEAD, timeout=0.1, retries=1) as c:
        with pytest.raises(ValueError, match="0..9223372036854775807"):
            c.set_seed(2**64)  # refused before anything is sent: no 2 s wait for the dead endpoint


def test_import_sfbridge_is_cheap_and_exports_the_client():
    code = ("import sys, sfbridge; cheap = 'zmq' not in sys.modules and 'numpy' not in sys.modules; "
            "from sfbridge import Client, AsyncClient, Frame, DaemonUnavailable, RequestError; "
            "print(cheap, Client.__module__, AsyncClient.__module__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "sfbridge.client", "sfbridge.aio"]


def test_pygame_example_takes_endpoints_from_the_environment():
    """With SFBRIDGE_CONTROL set and no --control, the example asks that daemon (here: a dead one)."""
    env = clean_env(SFBRIDGE_CONTROL=DEAD, SFBRIDGE_FRAMES=f"tcp://127.0.0.1:{free_port()}",
                    SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy")
    r = subprocess.run([sys.executable, str(REPO / "examples" / "pygame_background.py"), "--seconds", "1",
                        "--headless"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert_error(r, f"no reply from sfbridge daemon at {DEAD}", code=3)


def test_schedule_example_takes_endpoints_from_the_environment(served):
    env = clean_env(SFBRIDGE_CONTROL=served.control, SFBRIDGE_FRAMES=served.frames)
    r = subprocess.run([sys.executable, str(REPO / "examples" / "prompt_schedule.py"), "--seconds", "1.5"],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "sent    state" in r.stdout and "applied state" in r.stdout, r.stdout

