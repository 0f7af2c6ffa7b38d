"""Access control (sfbridge/security.py, docs/PROTOCOL.md "Security"), on real sockets.

Each test pins one edge of the rule: a non-loopback bind is refused unless CURVE or --insecure; CURVE
admits only the keys in --curve-allow; an unknown key, a wrong server key or a NULL client get neither
a reply nor a frame; ipc socket files are owner-only; key files are written and read safely.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from conftest import REPO, endpoints, free_port

from sfbridge.aio import AsyncClient
from sfbridge.client import Client, DaemonUnavailable
from sfbridge.daemon import Daemon, DaemonConfig
from sfbridge.security import AccessError, KeyRing, check_bind, client_keys, is_local_endpoint, keygen

SMALL = {"width": 160, "height": 96}


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SFBRIDGE_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "sfbridge.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """A daemon key pair, an admitted client ("game") and one the daemon does not know ("stranger")."""
    allow = tmp_path / "allow"
    allow.mkdir()
    out = {"allow": allow}
    for name, folder in (("daemon", tmp_path), ("game", tmp_path), ("stranger", tmp_path)):
        out[f"{name}.key"], out[f"{name}.key_secret"] = keygen(name, folder)
    (allow / "game.key").write_bytes(out["game.key"].read_bytes())
    return out


@pytest.fixture
def curve_daemon(keys):
    control, frames = endpoints()
    cfg = DaemonConfig(control=control, frames=frames, input=f"tcp://127.0.0.1:{free_port()}", model_options=SMALL,
                       curve_secret=str(keys["daemon.key_secret"]), curve_allow=str(keys["allow"]))
    d = Daemon(cfg).start()
    yield d
    d.stop()


# --- the bind rule -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint, local", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.3.4.5:5555", True), ("tcp://[::1]:5555", True),
    ("tcp://localhost:5555", True), ("ipc:///tmp/sfbridge/control", True), ("inproc://control", True),
    ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://192.168.1.20:5555", False),
    ("tcp://10.8.0.1:5555", False), ("tcp://eth0:5555", False), ("tcp://[::]:5555", False),
    ("tcp://example.org:5555", False), ("ipc://@abstract", False),
])
def test_which_endpoints_count_as_local(endpoint: str, local: bool) -> None:
    assert is_local_endpoint(endpoint) is local


def test_bind_rule_refuses_without_curve_warns_with_insecure() -> None:
    eps = {"control": "tcp://0.0.0.0:5555", "frames": "tcp://127.0.0.1:5556"}
    with pytest.raises(AccessError, match=r"control tcp://0\.0\.0\.0:5555.*--insecure"):
        check_bind(eps, curve=False, insecure=False)
    warnings = check_bind(eps, curve=False, insecure=True)
    assert len(warnings) == 1 and "INSECURE" in warnings[0] and "0.0.0.0" in warnings[0]
    assert "frames" not in warnings[0]
    assert check_bind(eps, curve=True, insecure=False) == []


def test_daemon_refuses_a_wildcard_bind_before_loading_anything() -> None:
    control = f"tcp://*:{free_port()}"
    with pytest.raises(AccessError, match="reachable from other machines"):
        Daemon(DaemonConfig(control=control, frames=endpoints()[1], model_options=SMALL))


def test_input_socket_falls_under_the_rule_too() -> None:
    control, frames = endpoints()
    with pytest.raises(AccessError, match=r"input tcp://0\.0\.0\.0"):
        Daemon(DaemonConfig(control=control, frames=frames, input=f"tcp://0.0.0.0:{free_port()}", model_options=SMALL))


def test_insecure_bind_serves_and_says_so_in_status() -> None:
    port = free_port()
    cfg = DaemonConfig(control=f"tcp://0.0.0.0:{port}", frames=endpoints()[1], model_options=SMALL, insecure=True)
    d = Daemon(cfg).start()
    try:
        with Client(control=f"tcp://127.0.0.1:{port}", frames=cfg.frames, timeout=3.0) as c:
            status = c.status()
        assert any("INSECURE" in w and f"0.0.0.0:{port}" in w for w in status["warnings"]), status["warnings"]
        assert status["security"] == {"mechanism": "NULL"}
    finally:
        d.stop()


def test_loopback_daemon_has_no_security_warning(client) -> None:
    status = client.status()
    assert not any("INSECURE" in w for w in status["warnings"])


@pytest.mark.parametrize("how", ["option-any", "option-star", "env"])
def test_cli_serve_refuses_a_public_bind(how: str) -> None:
    port = free_port()
    args = ["serve", "--model", "testsrc", "--frames", f"tcp://127.0.0.1:{free_port()}"]
    env = {}
    if how == "option-any":
        args += ["--control", f"tcp://0.0.0.0:{port}"]
    elif how == "option-star":
        args += ["--control", f"tcp://*:{port}"]
    else:
        env["SFBRIDGE_CONTROL"] = f"tcp://0.0.0.0:{port}"
    t0 = time.monotonic()
    r = run_cli(*args, env=env, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "reachable from other machines" in r.stderr and "--insecure" in r.stderr
    assert time.monotonic() - t0 < 20  # refused up front, not after a model load


# --- ipc files -----------------------------------------------------------------------------------------------


def test_ipc_socket_files_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask: libzmq would leave the files 0755
    try:
        cfg = DaemonConfig(control=f"ipc://{tmp_path}/control", frames=f"ipc://{tmp_path}/frames", model_options=SMALL)
        d = Daemon(cfg).start()
    finally:
        os.umask(old)
    try:
        for name in ("control", "frames"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
        with Client(control=cfg.control, frames=cfg.frames, timeout=3.0) as c:
            assert c.ping()["pong"] is True
    finally:
        d.stop()


# --- keys ----------------------------------------------------------------------------------------------------


def test_keygen_writes_z85_files_secret_owner_only_and_refuses_to_overwrite(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    r = run_cli("keygen", "laptop", "--dir", str(folder))
    assert r.returncode == 0, r.stderr
    public, secret = folder / "laptop.key", folder / "laptop.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    pub, sec = zmq.auth.load_certificate(secret)
    assert len(pub) == 40 and len(sec) == 40 and zmq.curve_public(sec) == pub
    assert zmq.auth.load_certificate(public) == (pub, None)
    before = secret.read_bytes()
    r = run_cli("keygen", "laptop", "--dir", str(folder))
    assert r.returncode == 1 and "--force" in r.stderr
    assert secret.read_bytes() == before
    r = run_cli("keygen", "laptop", "--dir", str(folder), "--force")
    assert r.returncode == 0, r.stderr
    assert secret.read_bytes() != before and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert zmq.auth.load_certificate(public)[0] == zmq.auth.load_certificate(secret)[0]
    assert run_cli("keygen", "../evil", "--dir", str(folder)).returncode == 2


def test_client_key_file_errors_are_clear(keys, tmp_path: Path) -> None:
    cases = [
        ((keys["daemon.key"], tmp_path / "missing.key_secret"), "no such file"),
        ((keys["daemon.key"], keys["game.key"]), "holds only a public key"),
        ((keys["daemon.key"], tmp_path), "is a directory"),
        ((None, keys["game.key_secret"]), "needs server_key"),
    ]
    garbage = tmp_path / "garbage.key"
    garbage.write_text("hello\n")
    cases.append(((garbage, keys["game.key_secret"]), "not a key file"))
    tampered = tmp_path / "tampered.key_secret"
    text = keys["game.key_secret"].read_text()
    tampered.write_text(text.replace(zmq.auth.load_certificate(keys["game.key_secret"])[0].decode(),
                                     zmq.auth.load_certificate(keys["stranger.key"])[0].decode()))
    cases.append(((keys["daemon.key"], tampered), "does not match"))
    unreadable = tmp_path / "locked.key_secret"
    unreadable.write_bytes(keys["game.key_secret"].read_bytes())
    unreadable.chmod(0)
    if not os.access(unreadable, os.R_OK):  # root reads anything
        cases.append(((keys["daemon.key"], unreadable), "not readable"))
    for (server, client), message in cases:
        with pytest.raises(ValueError, match=message):
            Client(server_key=server, client_key=client)


def test_keys_come_from_the_environment(keys, monkeypatch) -> None:
    monkeypatch.setenv("SFBRIDGE_SERVER_KEY", str(keys["daemon.key"]))
    monkeypatch.setenv("SFBRIDGE_CLIENT_KEY", str(keys["game.key_secret"]))
    got = client_keys()
    assert got is not None and got.public == zmq.auth.load_certificate(keys["game.key"])[0]
    monkeypatch.setenv("SFBRIDGE_CLIENT_KEY", str(keys["game.key"]))
    with pytest.raises(AccessError, match="SFBRIDGE_CLIENT_KEY .*holds only a public key"):
        client_keys()


# --- CURVE end to end ----------------------------------------------------------------------------------------


def test_known_key_steers_and_watches(curve_daemon, keys) -> None:
    cfg = curve_daemon.config
    with Client(control=cfg.control, frames=cfg.frames, timeout=3.0, server_key=keys["daemon.key"],
                client_key=keys["game.key_secret"]) as c:
        assert c.set_prompt("a lighthouse at night")["state_id"] >= 1
        frame = next(iter(c.subscribe("jpeg", timeout=5.0)))
        assert frame.image.shape == (96, 160, 3)
        security = c.status()["security"]
    assert security["mechanism"] == "CURVE" and security["allowed_keys"] == 1
    assert security["admitted"] >= 2 and security["refused"] == 0


def test_async_client_with_keys(curve_daemon, keys) -> None:
    cfg = curve_daemon.config

    async def go() -> dict:
        c = AsyncClient(control=cfg.control, frames=cfg.frames, timeout=3.0, server_key=keys["daemon.key"],
                        client_key=keys["game.key_secret"])
        try:
            return await c.status()
        finally:
            c.close()

    assert asyncio.run(go())["security"]["mechanism"] == "CURVE"


def test_every_server_socket_is_a_curve_server(curve_daemon) -> None:
    """One bind() configures them all: control, frames and the input socket."""
    socks = {"control": curve_daemon.control.sock, "frames": curve_daemon.publisher.sock}
    if curve_daemon.input is not None:
        socks["input"] = curve_daemon.input.sock
    assert "input" in socks
    for name, sock in socks.items():
        if not sock.closed:
            assert sock.curve_server == 1 and sock.mechanism == zmq.CURVE, name


def test_unknown_key_gets_no_reply_and_no_frame(curve_daemon, keys) -> None:
    cfg = curve_daemon.config
    with Client(control=cfg.control, frames=cfg.frames, timeout=0.7, retries=2, server_key=keys["daemon.key"],
                client_key=keys["stranger.key_secret"]) as c:
        with pytest.raises(DaemonUnavailable, match="curve-allow"):
            c.status()
        received = []
        with pytest.raises(DaemonUnavailable):
            for frame in c.subscribe("jpeg", timeout=1.5):
                received.append(frame)
    assert received == []
    assert curve_daemon.access.snapshot()["refused"] >= 1  # the ZAP handler saw and refused it
    assert not curve_daemon.status()["stats"]["subscribers"]  # no subscription ever got through


def test_refused_handshake_before_the_first_send_does_not_hang(curve_daemon, keys) -> None:
    """libzmq drops a refused connection for good: a blocking send on that DEALER would wait forever.

    The socket is opened and left alone until the handshake has failed, then the request is made
    (under load this happens on its own, between connect and send).
    """
    cfg = curve_daemon.config
    with Client(control=cfg.control, frames=cfg.frames, timeout=0.7, retries=2, server_key=keys["daemon.key"],
                client_key=keys["stranger.key_secret"]) as c:
        c._socket()
        deadline = time.monotonic() + 10
        while curve_daemon.access.snapshot()["refused"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the ERROR command reaches the client and its session ends
        t0 = time.monotonic()
        with pytest.raises(DaemonUnavailable):
            c.ping()
        assert time.monotonic() - t0 < 5


def test_wrong_server_key_gets_nothing(curve_daemon, keys) -> None:
    """A client that trusts another server key (a man in the middle, or a typo) never completes the handshake."""
    cfg = curve_daemon.config
    with Client(control=cfg.control, frames=cfg.frames, timeout=0.7, retries=1, server_key=keys["stranger.key"],
                client_key=keys["game.key_secret"]) as c:
        with pytest.raises(DaemonUnavailable):
            c.ping()


def test_null_client_to_curve_daemon_gets_nothing(curve_daemon) -> None:
    cfg = curve_daemon.config
    ctx = zmq.Context()
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(cfg.control)
        dealer.send(b"\x82\xa2op\xa4ping\xa2id\x01")  # {"op": "ping", "id": 1}
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(cfg.frames)
        assert dealer.poll(1500, zmq.POLLIN) == 0
        assert sub.poll(500, zmq.POLLIN) == 0
        dealer.close()
        sub.close()
    finally:
        ctx.term()
    assert not curve_daemon.status()["stats"]["subscribers"]  # no subscription ever got through


def test_cli_with_keys_options_and_environment(curve_daemon, keys) -> None:
    cfg = curve_daemon.config
    base = ["--control", cfg.control, "--timeout", "3"]
    r = run_cli("status", *base, "--server-key", str(keys["daemon.key"]), "--client-key",
                str(keys["game.key_secret"]))
    assert r.returncode == 0, r.stderr
    assert '"mechanism": "CURVE"' in r.stdout
    env = {"SFBRIDGE_SERVER_KEY": str(keys["daemon.key"]), "SFBRIDGE_CLIENT_KEY": str(keys["game.key_secret"])}
    assert run_cli("ping", *base, env=env).returncode == 0
    r = run_cli("ping", "--control", cfg.control, "--timeout", "0.5")
    assert r.returncode == 3 and "--server-key" in r.stderr  # NULL client: no answer, and the hint says why
    r = run_cli("ping", *base, "--client-key", str(keys["game.key_secret"]))
    assert r.returncode == 2 and "--client-key needs --server-key" in r.stderr
    r = run_cli("ping", *base, "--server-key", str(keys["daemon.key"]), "--client-key", "/nonexistent.key_secret")
    assert r.returncode == 2 and "--client-key '/nonexistent.key_secret': no such file" in r.stderr


def test_cli_serve_with_curve_on_all_interfaces(keys) -> None:
    """The documented remote setup: bind every interface with CURVE, no --insecure needed, no warning."""
    port_c, port_f = free_port(), free_port()
    env = {"SFBRIDGE_CURVE_SECRET": str(keys["daemon.key_secret"]), "SFBRIDGE_CURVE_ALLOW": str(keys["allow"])}
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SFBRIDGE_")} | env
    proc = subprocess.Popen([sys.executable, "-m", "sfbridge.cli", "serve", "--model", "testsrc", "--width", "160",
                             "--height", "96", "--control", f"tcp://0.0.0.0:{port_c}", "--frames",
                             f"tcp://0.0.0.0:{port_f}"], env=full_env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        with Client(control=f"tcp://127.0.0.1:{port_c}", frames=f"tcp://127.0.0.1:{port_f}", timeout=5.0,
                    server_key=keys["daemon.key"], client_key=keys["game.key_secret"]) as c:
            status = c.status()
            assert next(iter(c.subscribe("rgb24", timeout=10.0))).image.shape == (96, 160, 3)
        assert status["security"]["mechanism"] == "CURVE"
        assert not any("INSECURE" in w for w in status["warnings"])
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


def test_serve_needs_both_curve_options(keys) -> None:
    r = run_cli("serve", "--model", "testsrc", "--curve-secret", str(keys["daemon.key_secret"]),
                "--control", f"tcp://127.0.0.1:{free_port()}", "--frames", f"tcp://127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "go together" in r.stderr
    empty = keys["allow"].parent / "empty"
    empty.mkdir()
    r = run_cli("serve", "--model", "testsrc", "--curve-secret", str(keys["daemon.key_secret"]), "--curve-allow",
                str(empty), "--control", f"tcp://127.0.0.1:{free_port()}", "--frames",
                f"tcp://127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "holds no *.key file" in r.stderr


def test_refused_keys_are_counted_and_logged_at_most_once_per_period(caplog) -> None:
    """A stranger reconnecting every 100 ms must not fill the log (issue 11, defect 4's lesson)."""
    ring = KeyRing({b"k" * 40: "game.key"}, "allow/")
    with caplog.at_level("WARNING", logger="sfbridge.security"):
        results = [ring.callback("*", b"x" * 40) for _ in range(500)]
    assert not any(results) and ring.refused == 500
    assert len([r for r in caplog.records if "refused a CURVE client" in r.getMessage()]) == 1
    assert ring.callback("*", b"k" * 40) and ring.admitted == 1


def test_viewer_with_keys(curve_daemon, keys, tmp_path: Path) -> None:
    """`sfbridge view` steers and shows a CURVE daemon with the key options; a stranger's key gets exit 3."""
    pytest.importorskip("pygame")
    cfg = curve_daemon.config
    shot = tmp_path / "shot.png"
    base = ["view", "--control", cfg.control, "--frames", cfg.frames, "--server-key", str(keys["daemon.key"]),
            "--no-overlay", "--timeout", "2"]
    env = {"SDL_VIDEODRIVER": "dummy"}
    r = run_cli(*base, "--client-key", str(keys["game.key_secret"]), "--screenshot", str(shot), env=env)
    assert r.returncode == 0, r.stderr
    assert shot.stat().st_size > 0 and Path(f"{shot}.json").exists()
    r = run_cli(*base, "--client-key", str(keys["stranger.key_secret"]), "--screenshot", str(shot), env=env)
    assert r.returncode == 3 and "curve-allow" in r.stderr


def test_bench_curve_quick() -> None:
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_curve.py"), "--quick"], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split("|") for line in r.stdout.splitlines() if line.startswith(("jpeg", "rgb24"))}
    assert set(rows) == {"jpeg", "rgb24"}
    assert 40_000 < int(rows["jpeg"][0].split()[1]) < 70_000 and int(rows["rgb24"][0].split()[1]) == 832 * 480 * 3
    for fmt, groups in rows.items():  # wall, CPU, latency: NULL, CURVE, ratio each
        assert len(groups) == 4, groups
        for group in groups[1:]:
            null, curve, ratio = (float(v) for v in group.split())
            assert null > 0 and curve > 0 and ratio > 0, (fmt, group)  # figures, not a speed claim: a loaded CI
