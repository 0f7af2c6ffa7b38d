"""Smoke tests: each example runs headless for 2 s against a real daemon and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import REPO, ServeProcess, free_port


@pytest.fixture(scope="module")
def serve() -> Iterator[ServeProcess]:
    proc = ServeProcess("--model", "testsrc", "--width", "192", "--height", "112")
    yield proc
    proc.stop()


def run_example(name: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO / "examples" / name), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_pygame_background(serve):
    res = run_example("pygame_background.py", "--control", serve.control, "--frames", serve.frames,
                      "--seconds", "2", "--headless", "--size", "384x224")
    assert res.returncode == 0, res
    shown = int(res.stdout.split("frames shown:")[1].split(",")[0])
    assert shown > 0, res.stdout
    assert "a dark dungeon floor" in res.stdout, res.stdout  # the headless number-key prompt was sent


def test_prompt_schedule(serve):
    res = run_example("prompt_schedule.py", "--control", serve.control, "--frames", serve.frames,
                      "--seconds", "2", "--headless")
    assert res.returncode == 0, res
    assert "sent    state" in res.stdout and "applied state" in res.stdout, res.stdout


def test_pygame_v2v():
    """The game's own render goes in (v2v), the restyled stream comes out made from it (header `input`)."""
    inp = f"tcp://127.0.0.1:{free_port()}"
    proc = ServeProcess("--model", "testsrc", "--width", "192", "--height", "112", "--input", inp)
    try:
        res = run_example("pygame_v2v.py", "--control", proc.control, "--frames", proc.frames, "--input", inp,
                          "--seconds", "4", "--headless")
    finally:
        proc.stop()
    assert res.returncode == 0, res
    assert "v2v on from block" in res.stdout, res.stdout
    made = int(res.stdout.split("made from our input:")[1].split(",")[0])
    sent = int(res.stdout.split("renders sent:")[1].split(",")[0])
    assert made > 0 and 0 < sent <= 4 * 16 + 2, res.stdout  # <= 16 renders per second leave


@pytest.mark.parametrize("name", ["pygame_background.py", "prompt_schedule.py", "pygame_v2v.py"])
def test_examples_without_daemon_exit_3(name):
    res = run_example(name, "--control", f"tcp://127.0.0.1:{free_port()}", "--frames",
                      f"tcp://127.0.0.1:{free_port()}", "--seconds", "1", "--headless")
    assert res.returncode == 3, res
    assert "error: no reply from sfbridge daemon" in res.stderr
