"""The raw-ZMTP reference clients (C# in clients/unity, GDScript in clients/godot) keep one routing id
across their Lazy Pirate reconnects, so a retry on a new socket applies once (PROTOCOL.md 2.1.1).

- test_*_retry_through_a_stalled_control_thread_applies_once: the C# and Godot versions of
  test_hardening_faults.py::test_a_retry_on_a_new_socket_through_a_stalled_control_thread_applies_once.
  An in-process daemon whose control handler stalls 1.2 s on the first prompt; the client (500 ms
  timeout, 5 attempts) times out, reconnects and sends the same request again. The prompt must be
  handled once, the daemon must have answered a retry from memory, and the client gets the reply
  with state_id before + 1. Without the routing id each reconnect is a new peer to the daemon and
  the prompt is handled two or three times.
- test_*_announces_one_routing_id_on_every_connection: handshake level, against a libzmq ROUTER
  (ROUTER_HANDOVER on, like the daemon's) that never answers: every one of the client's TCP
  connections (counted by a socket monitor) carries the READY Identity the client printed, "sfb" +
  13 bytes, as libzmq reads it.

The programs: clients/unity/Tests~/RetryTest.cs (mono) and tests/godot/test_retry.gd (headless Godot).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import test_godot_client as godot
from conftest import SilentRouter, stall_first_prompt, wait_retry_answered
from test_csharp_client import MONO, _compile, _console_program, needs_mono

TEXT = "a stalled prompt"


def _csharp_cmd(tmp_path: Path, control: str, *args: str) -> list[str]:
    """RetryTest.exe sending one request to control (it has no frames connection)."""
    exe = tmp_path / "RetryTest.exe"
    _compile(exe, _console_program("RetryTest.cs"))
    return [MONO, "--debug", str(exe), "--control", control, *args]


def _godot_cmd(tmp_path: Path, control: str, *args: str) -> list[str]:
    """test_retry.gd: an SFBridgeStream sending one request to control; its frames connection goes to a
    port where nothing listens (it only retries in the background)."""
    godot._ensure_godot()
    proj = godot._make_project(tmp_path)
    frames = f"tcp://127.0.0.1:{godot._free_port()}"
    return godot._godot_cmd(proj, "--control", control, "--frames", frames, *args, script="res://test_retry.gd")


def _run(cmd: list[str], tmp_path: Path, timeout: float = 90) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, env=godot._godot_env(tmp_path), timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "OK routing_id_rules" in out and "ALL_OK" in out, out[-5000:]
    assert "SCRIPT ERROR" not in out and "Parse Error" not in out, out[-5000:]
    return out


def _routing_id(out: str) -> bytes:
    return bytes.fromhex(next(line for line in out.splitlines() if line.startswith("ROUTING_ID ")).split()[1])


# --- end to end: a daemon whose control thread is stuck in the first prompt ----------------------------------


def _stalled_retry_applies_once(make_daemon, tmp_path: Path, command) -> None:
    d = make_daemon()
    prompts = stall_first_prompt(d)
    before = d.box.peek().state_id
    out = _run(command(tmp_path, d.config.control, "--text", TEXT, "--timeout-ms", "500", "--attempts", "5"),
               tmp_path)
    wait_retry_answered(d)
    retried = [line for line in out.splitlines() if "attempt" in line]
    assert retried, out[-5000:]  # it did time out and send again on a new socket
    assert prompts == [TEXT], (prompts, out[-5000:])  # handled once, though sent at least twice
    assert d.control.retries.retries_answered >= 1
    assert f"REPLY state_id={before + 1}" in out, out[-5000:]
    assert d.box.peek().state_id == before + 1


@needs_mono
def test_csharp_retry_through_a_stalled_control_thread_applies_once(make_daemon, tmp_path):
    _stalled_retry_applies_once(make_daemon, tmp_path, _csharp_cmd)


def test_godot_retry_through_a_stalled_control_thread_applies_once(make_daemon, tmp_path):
    _stalled_retry_applies_once(make_daemon, tmp_path, _godot_cmd)


# --- handshake: the READY Identity libzmq reads on each connection -------------------------------------------


def _one_routing_id_on_every_connection(tmp_path: Path, command) -> None:
    router = SilentRouter()
    try:
        out = _run(command(tmp_path, router.endpoint, "--timeout-ms", "400", "--attempts", "3"), tmp_path)
        time.sleep(0.2)
    finally:
        router.close()
    rid = _routing_id(out)
    assert "TIMEOUT" in out, out[-5000:]
    assert len(rid) == 16 and rid.startswith(b"sfb"), rid
    assert router.accepted == 3, (router.accepted, out[-5000:])  # a new connection per attempt
    assert router.ids == [rid] * 3, (router.ids, rid)  # each carrying the same READY Identity


@needs_mono
def test_csharp_announces_one_routing_id_on_every_connection(tmp_path):
    _one_routing_id_on_every_connection(tmp_path, _csharp_cmd)


def test_godot_announces_one_routing_id_on_every_connection(tmp_path):
    _one_routing_id_on_every_connection(tmp_path, _godot_cmd)
