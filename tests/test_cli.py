"""The ``sfbridge`` command as a user runs it: real subprocesses, real sockets."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest
from conftest import REPO, ServeProcess, free_port

from sfbridge.cli import build_parser

SUBCOMMANDS = ["serve", "status", "prompt", "seed", "steps", "cancel", "pause", "resume", "ping", "reset", "record"]


def sfb(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sfbridge.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_every_subcommand_has_help():
    for cmd in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([cmd, "--help"])
        assert exc.value.code == 0
    r = sfb("--help")
    assert r.returncode == 0 and all(c in r.stdout for c in SUBCOMMANDS)


@pytest.fixture(scope="module")
def served():
    p = ServeProcess("--model", "testsrc", "--width", "128", "--height", "80")
    yield p
    p.stop()


def ctl(p: ServeProcess, *args: str) -> dict:
    r = sfb(*args, "--control", p.control)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_cli_controls_a_running_daemon(served):
    st = ctl(served, "status")
    assert st["model"] == "testsrc" and (st["width"], st["height"]) == (128, 80) and st["protocol"] == 1
    res = ctl(served, "prompt", "a lighthouse in a storm", "--transition", "blend", "--blend-blocks", "2")
    assert res["state_id"] > st["state_id"]
    assert ctl(served, "seed", "123")["state_id"] == res["state_id"] + 1
    assert ctl(served, "pause")["paused"] is True
    assert ctl(served, "status")["paused"] is True
    assert ctl(served, "resume")["paused"] is False
    st2 = ctl(served, "status")
    assert st2["prompt"] == "a lighthouse in a storm" and st2["seed"] == 123
    r = sfb("steps", "1000", "500", "--control", served.control)
    assert r.returncode == 1 and "not_supported" in r.stderr


def test_cli_weighted_prompts_scheduling_and_cancel(served):
    """Issue 10 from the command line: several TEXTs with --weights, --blend shorthand, --interp/--mix,
    --recache; a seed --at-block that `status` lists as scheduled; `cancel` drops it."""
    res = ctl(served, "prompt", "a red desert", "a blue ocean", "--weights", "0.7", "0.3", "--mix", "slerp",
              "--blend", "3", "--interp", "slerp", "--recache")
    assert res["scheduled"] is False and res["applies_at_block"] >= 0
    st = ctl(served, "status")
    assert st["prompts"] == [{"text": "a red desert", "weight": 0.7}, {"text": "a blue ocean", "weight": 0.3}]
    assert st["mix"] == "slerp" and st["prompt"] == "a red desert (0.70) + a blue ocean (0.30)"
    equal = ctl(served, "prompt", "a", "b", "c")  # several TEXTs without --weights: equal weights
    assert [p["weight"] for p in ctl(served, "status")["prompts"]] == [1.0, 1.0, 1.0] and equal["state_id"]
    target = st["block"] + 200
    seed = ctl(served, "seed", "5", "--at-block", str(target))
    assert (seed["applies_at_block"], seed["scheduled"]) == (target, True)
    at_pts = ctl(served, "prompt", "later", "--at-pts", str((9 + 12 * (target + 1)) / 16))
    assert (at_pts["applies_at_block"], at_pts["scheduled"]) == (target + 2, True)
    scheduled = ctl(served, "status")["scheduled"]
    assert {"state_id": seed["state_id"], "change": "seed", "at_block": target} in scheduled
    assert ctl(served, "cancel", str(seed["state_id"])) == {"cancelled": seed["state_id"]}
    assert ctl(served, "cancel", str(at_pts["state_id"])) == {"cancelled": at_pts["state_id"]}
    assert ctl(served, "status")["scheduled"] == []
    r = sfb("cancel", str(seed["state_id"]), "--control", served.control)
    assert r.returncode == 1 and "not_found" in r.stderr and "Traceback" not in r.stderr


def test_record_writes_a_playable_video(served, tmp_path):
    out = tmp_path / "out.mp4"
    r = sfb("record", str(out), "--seconds", "1.5", "--control", served.control, "--frames", served.frames)
    assert r.returncode == 0, r.stderr
    # The result is reported once, on stdout (the library no longer logs it a second time).
    assert r.stdout.count("wrote 24 frames") == 1 and "recorded" not in r.stderr, (r.stdout, r.stderr)
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 24 and frames[0].shape == (80, 128, 3)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 1  # it moves


def test_requests_without_daemon_fail_clearly():
    r = sfb("status", "--control", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.3")
    assert r.returncode == 3 and "is `sfbridge serve` running?" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_clean_shutdown_on_signal(sig):
    p = ServeProcess("--width", "64", "--height", "48")
    rc = p.stop(sig)
    out = p.output()
    assert rc == 0, out
    assert "shutting down" in out and "Traceback" not in out


def test_one_signal_delivered_twice_is_one_clean_stop():
    """`timeout 10 sfbridge serve`, systemd and `kill -- -PGID` signal the process and its group: the same
    SIGTERM arrives twice within microseconds. That is one request to stop (exit 0, `stopping` sent), not
    the "second Ctrl-C" that forces an exit (130); it used to be taken for one."""
    p = ServeProcess("--width", "64", "--height", "48")
    p.proc.send_signal(signal.SIGTERM)
    time.sleep(0.02)  # back to back, two SIGTERMs can merge into one pending signal in the kernel
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(15) == 0, p.output()
    out = p.output()
    assert "already stopping" in out and "forcing exit" not in out and "stopping event sent" in out


def test_serve_refuses_a_busy_port(served):
    r = sfb("serve", "--control", served.control, "--frames", f"tcp://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "Address already in use" in r.stderr


def test_serve_unknown_model_is_clear():
    r = sfb("serve", "--model", "nope", "--control", f"tcp://127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "unknown model 'nope'" in r.stderr and "Traceback" not in r.stderr


def all_subparsers() -> dict[str, argparse.ArgumentParser]:
    from sfbridge.cli import _load_extra_commands

    _load_extra_commands()
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"sfbridge": parser, **sub.choices}


def test_every_option_and_positional_has_help():
    missing = [f"{name} {action.dest}" for name, p in all_subparsers().items() for action in p._actions
               if not action.help and not isinstance(action, argparse._SubParsersAction)]
    assert not missing, missing


@pytest.mark.parametrize("where", ["before", "after"])
def test_log_level_before_or_after_the_command(where):
    argv = ["--log-level", "debug", "status"] if where == "before" else ["status", "--log-level", "debug"]
    assert build_parser().parse_args(argv).log_level == "debug"
    # Given nowhere, it stays unset for apply_environment (SFBRIDGE_LOG_LEVEL, then info).
    assert build_parser().parse_args(["status"]).log_level is None
    # A subcommand's own --log-level wins over the top-level one.
    assert build_parser().parse_args(["--log-level", "error", "ping", "--log-level", "debug"]).log_level == "debug"


def test_log_level_after_the_command_takes_effect():
    """The client logs each unanswered try at info: shown with info, hidden with warning."""
    dead = ["status", "--control", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.2"]
    shown, hidden = sfb(*dead, "--log-level", "info"), sfb(*dead, "--log-level", "warning")
    assert shown.returncode == hidden.returncode == 3
    assert "no reply to 'status'" in shown.stderr and "no reply to 'status'" not in hidden.stderr


def test_speed_option_choices_match_the_model():
    """cli.py keeps the choices literal (``--help`` must not import torch): they must stay the model's."""
    from sfbridge.model.attention import BACKENDS
    from sfbridge.model.presets import PRESETS as MODEL_PRESETS

    from sfbridge.cli import ATTN_BACKENDS, FP8_MODES, PRESETS

    assert set(ATTN_BACKENDS) == set(BACKENDS)
    assert set(PRESETS) == set(MODEL_PRESETS)
    for mode in FP8_MODES:  # every CLI mode is one the presets module accepts
        from sfbridge.model.presets import resolve

        assert resolve(None, fp8=mode)["fp8"] == mode


def test_serve_speed_options_reach_the_generator():
    p = ServeProcess("--model", "tiny", "--decoder", "preview", "--attn", "sdpa", "--overlap", "on")
    try:
        st = ctl(p, "status")
        assert (st["model"], st["attn"], st["overlap"], st["compile"]) == ("tiny", "sdpa", True, False)
    finally:
        p.stop()


def test_serve_refuses_a_backend_that_cannot_run():
    r = sfb("serve", "--model", "tiny", "--attn", "fa3", "--control", f"tcp://127.0.0.1:{free_port()}",
            "--frames", f"tcp://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "fa3" in r.stderr and "CUDA" in r.stderr, r.stderr
