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


@pytest.mark.parametrize("name", ["pygame_background.py", "prompt_schedule.py"])
def test_examples_without_daemon_exit_3(name):
    res = run_example(name, "--control", f"tcp://127.0.0.1:{free_port()}", "--frames",
                      f"tcp://127.0.0.1:{free_port()}", "--seconds", "1", "--headless")
    assert res.returncode == 3, res
    assert "error: no reply from sfbridge daemon" in res.stderr
