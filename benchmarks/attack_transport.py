"""Transport and subscription abuse: every transport defect of issue 11, one attack after another.

Each attack runs against one real ``sfbridge serve`` (testsrc, native pace) while a well-behaved
jpeg subscriber (RCVHWM 4, drains every tick) counts its frames; for each attack the line reports
what the attack did, the subscriber's worst one-second fps and longest gap during it, and the
daemon's RSS before, at its peak and after a settle:

- ``topic_flood``: one SUB subscribes 20,000 distinct topics, holds, leaves (status reply size too);
- ``huge_sub``: an 8 MiB subscription (then kept as a topic? echoed in status?);
- ``big_frame``: a raw ZMTP peer declares a 1 GiB frame on the frames socket and streams into it;
- ``multipart``: 200 parts of just under 1 MiB on the control socket;
- ``log_amp``: 2,000 refused requests with a 65 KB field (log bytes written);
- ``pipelined``: a DEALER sends 20,000 ``status`` and reads late (replies received, counted as dropped);
- ``ghosts``: a socket subscribes ``jpeg`` 1,000 times and disconnects (``stats.subscribers`` after);
- ``garbage``: 400 raw TCP connections send random bytes, HTTP or a TLS hello (still open after a wait);
- ``idle``: 500 DEALER peers complete the handshake and never send (descriptors, a new client's ping);
- ``subs200``: 200 reading subscribers;
- ``stalled``: 100 rgb24 subscribers that never read (MB each);
- ``stopping``: 50 event subscribers, then SIGTERM: how many receive ``stopping``.

Prints one line (``name: figures`` per attack); ``--json PATH`` keeps details.

Usage: python benchmarks/attack_transport.py [--quick] [--only topic_flood,ghosts] [--json out.json]
"""

from __future__ import annotations

import argparse
import random
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import msgpack
import zmq
from attack_common import Serve, Watcher, raise_fd_limit, settle_rss, write_json

CTX = zmq.Context.instance()


def sock(kind: int, endpoint: str, **opts: int) -> zmq.Socket:
    s = CTX.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    for k, v in opts.items():
        s.setsockopt(getattr(zmq, k), v)
    s.connect(endpoint)
    return s


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def zmtp_peer(port: int, socket_type: bytes) -> socket.socket:
    """A raw ZMTP 3.0 NULL peer that has completed the handshake (docs/PROTOCOL.md 1.1)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32)
    got = b""
    while len(got) < 64:
        chunk = s.recv(64 - len(got))
        if not chunk:
            raise ConnectionError("daemon closed during the greeting")
        got += chunk
    body = b"\x05READY" + b"\x0bSocket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
    s.sendall(b"\x04" + bytes([len(body)]) + body)
    return s


def still_open(s: socket.socket) -> bool:
    """True while the daemon has not closed (or reset) this connection."""
    try:
        s.setblocking(False)
        while True:
            data = s.recv(65536)
            if not data:
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def status_bytes(serve: Serve) -> int:
    d = sock(zmq.DEALER, serve.control)
    try:
        d.send(msgpack.packb({"op": "status", "id": 1}))
        return len(d.recv()) if d.poll(10_000, zmq.POLLIN) else -1
    finally:
        d.close(0)


def stats(serve: Serve) -> dict:
    try:
        return serve.request("status", timeout=10)["stats"]
    except Exception:
        return {}


def jpeg_subs(serve: Serve) -> int | None:
    s = stats(serve).get("subscribers")
    return None if s is None else s.get("jpeg", 0)


# --- attacks: each gets (serve, scale) and returns its own figures --------------------------------

def topic_flood(serve: Serve, n: int, hold: float) -> dict:
    s = sock(zmq.SUB, serve.frames)
    t = time.monotonic()
    for i in range(n):
        s.setsockopt(zmq.SUBSCRIBE, b"t%06d" % i)
    time.sleep(hold)
    size = status_bytes(serve)
    s.close(0)
    time.sleep(hold)
    return {"topics": n, "send_s": round(time.monotonic() - t - 2 * hold, 2), "status_kb": round(size / 1024, 1)}


def huge_sub(serve: Serve, mib: int, hold: float) -> dict:
    """Sent raw: libzmq's own SUB/XSUB keep subscriptions in a recursive trie and crash the attacker's
    process on a topic this long (stack overflow), so the attack speaks ZMTP itself."""
    s = zmtp_peer(port_of(serve.frames), b"SUB")
    topic = b"j" * (mib << 20)
    try:
        s.sendall(b"\x02" + (len(topic) + 1).to_bytes(8, "big") + b"\x01" + topic)
        sent = True
    except OSError:
        sent = False
    time.sleep(hold)
    size_during = status_bytes(serve)
    s.close()
    time.sleep(hold)
    return {"sub_mib": mib, "sent": sent, "status_kb_during": round(size_during / 1024, 1),
            "status_kb_after": round(status_bytes(serve) / 1024, 1)}


def big_frame(serve: Serve, stream_mib: int) -> dict:
    s = zmtp_peer(port_of(serve.frames), b"SUB")
    s.sendall(b"\x02" + (1 << 30).to_bytes(8, "big") + b"\x01")  # a 1 GiB subscription message
    chunk, sent = b"\0" * (1 << 20), 0
    s.settimeout(5)
    try:
        while sent < stream_mib << 20:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass  # the daemon closed the connection: what a size limit does
    s.close()
    return {"declared_mib": 1024, "accepted_mib": sent >> 20}


def multipart(serve: Serve, parts: int) -> dict:
    d = sock(zmq.DEALER, serve.control)
    part = b"\0" * ((1 << 20) - 1024)
    d.send_multipart([msgpack.packb({"op": "ping", "id": 7})] + [part] * (parts - 1))
    replied = d.poll(5000, zmq.POLLIN)
    d.close(0)
    return {"parts": parts, "mib": round(parts * len(part) / 2**20), "replied": bool(replied)}


def log_amp(serve: Serve, n: int) -> dict:
    before = serve.log_bytes()
    d = sock(zmq.DEALER, serve.control)
    big = "x" * 65_000
    refused = [{"op": "prompt", "text": big}, {"op": big}, {"op": "prompt", "text": "a", "transition": big},
               {"op": "prompt", "text": "a", "mix": big}, {"op": "prompt", "prompts": [{"text": big, "weight": -1}]},
               {"op": "seed", "seed": big}, {"op": "prompt", "text": "a", "interp": big}]
    got, t = 0, time.monotonic()
    for i in range(n):
        d.send(msgpack.packb({**refused[i % len(refused)], "id": i}))  # each refused, the 65 KB value in it
        while d.poll(0, zmq.POLLIN):
            d.recv()
            got += 1
    while got < n and d.poll(5000, zmq.POLLIN):
        d.recv()
        got += 1
    d.close(0)
    time.sleep(0.5)
    written = serve.log_bytes() - before
    return {"requests": n, "replies": got, "log_kb": round(written / 1024, 1),
            "bytes_per_request": round(written / n), "send_s": round(time.monotonic() - t, 2)}


def pipelined(serve: Serve, n: int, late: float) -> dict:
    before = stats(serve)
    d = sock(zmq.DEALER, serve.control, SNDHWM=0)
    body = msgpack.packb({"op": "status", "id": 1})
    for _ in range(n):
        d.send(body)
    time.sleep(late)
    got = 0
    while d.poll(3000, zmq.POLLIN):
        d.recv()
        got += 1
    d.close(0)
    after = stats(serve)
    flat_before = {**before, **before.get("transport", {})}  # counters: docs/PROTOCOL.md 3.3 (`transport`)
    flat_after = {**after, **after.get("transport", {})}
    counted = {k: v - flat_before.get(k, 0) for k, v in flat_after.items()
               if isinstance(v, int) and k.startswith("replies_") and ("drop" in k or "undeliver" in k)}
    dropped = sum(counted.values())
    return {"sent": n, "received": got, "counted_dropped": counted, "silent_loss": n - got - dropped}


def ghosts(serve: Serve, n: int) -> dict:
    x = sock(zmq.XSUB, serve.frames)
    for _ in range(n):
        x.send(b"\x01jpeg")
    time.sleep(1.0)
    during = jpeg_subs(serve)
    x.close(0)
    time.sleep(2.0)
    after = jpeg_subs(serve)
    return {"subscribes": n, "jpeg_during": during, "jpeg_after": after,
            "ghosts": None if after is None else after - 1}  # the watcher is the 1


TLS_HELLO = bytes.fromhex("160301002f0100002b0303") + b"\0" * 32 + bytes.fromhex("000002002f0100")


def garbage(serve: Serve, n: int, wait: float) -> dict:
    rng = random.Random(11)
    conns = []
    fds_before = serve.status().get("fds", 0)
    for i in range(n):
        port = port_of(serve.control if i % 2 else serve.frames)
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=2)
            c.sendall([rng.randbytes(rng.randint(1, 300)), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", TLS_HELLO][i % 3])
            conns.append(c)
        except OSError:
            pass
    fds_during = serve.status().get("fds", 0)
    time.sleep(wait)
    open_after = sum(still_open(c) for c in conns)
    for c in conns:
        c.close()
    return {"connections": len(conns), "wait_s": wait, "open_after_wait": open_after,
            "fds_before": fds_before, "fds_during": fds_during}


def idle(serve: Serve, n: int, wait: float) -> dict:
    fds_before = serve.status().get("fds", 0)
    peers = [sock(zmq.DEALER, serve.control, RECONNECT_IVL=-1) for _ in range(n)]
    time.sleep(2.0)
    fds_during = serve.status().get("fds", 0)
    t = time.monotonic()
    try:
        serve.request("ping", timeout=5)
        ping_ms = round((time.monotonic() - t) * 1000, 1)
    except Exception:
        ping_ms = None
    time.sleep(wait)
    fds_after_wait = serve.status().get("fds", 0)
    for p in peers:
        p.close(0)
    return {"peers": n, "fds_before": fds_before, "fds_during": fds_during, "new_client_ping_ms": ping_ms,
            "wait_s": wait, "fds_after_wait": fds_after_wait}


def subs200(serve: Serve, n: int, hold: float) -> dict:
    subs = [sock(zmq.SUB, serve.frames, RCVHWM=4) for _ in range(n)]
    for s in subs:
        s.setsockopt(zmq.SUBSCRIBE, b"jpeg")
    poller = zmq.Poller()
    for s in subs:
        poller.register(s, zmq.POLLIN)
    received, deadline = 0, time.monotonic() + hold
    during = None
    while time.monotonic() < deadline:
        for s, _ in poller.poll(100):
            while True:
                try:
                    s.recv_multipart(zmq.NOBLOCK)
                    received += 1
                except zmq.Again:
                    break
        if during is None and time.monotonic() > deadline - hold / 2:
            during = jpeg_subs(serve)
    for s in subs:
        s.close(0)
    time.sleep(1.5)
    return {"subscribers": n, "fps_each": round(received / n / hold, 1), "jpeg_during": during,
            "jpeg_after": jpeg_subs(serve)}


def stalled(serve: Serve, n: int, hold: float) -> dict:
    before = serve.rss_mb()
    subs = [sock(zmq.SUB, serve.frames) for _ in range(n)]
    for s in subs:
        s.setsockopt(zmq.SUBSCRIBE, b"rgb24")
    time.sleep(hold)
    during = serve.rss_mb()
    rgb24 = stats(serve).get("subscribers", {}).get("rgb24")  # connections actually served rgb24 (capped)
    for s in subs:
        s.close(0)
    return {"subscribers": n, "rgb24_during": rgb24, "mb_each": round((during - before) / n, 2)}


def stopping(serve: Serve, n: int) -> dict:
    subs = [sock(zmq.SUB, serve.frames) for _ in range(n)]
    for s in subs:
        s.setsockopt(zmq.SUBSCRIBE, b"event")
    time.sleep(1.5)
    got: set[int] = set()
    poller = zmq.Poller()
    for s in subs:
        poller.register(s, zmq.POLLIN)
    serve.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(got) < n:
        for s, _ in poller.poll(100):
            while True:
                try:
                    m = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(m) == 3 and msgpack.unpackb(m[1]).get("type") == "stopping":
                    got.add(subs.index(s))
    for s in subs:
        s.close(0)
    return {"subscribers": n, "got_stopping": len(got), "exit_code": serve.proc.wait(15)}


def attacks(a: argparse.Namespace) -> dict[str, Callable[[Serve], dict]]:
    q = a.quick
    return {
        "topic_flood": lambda s: topic_flood(s, 2000 if q else 20_000, 1.0 if q else 3.0),
        "huge_sub": lambda s: huge_sub(s, 1 if q else 8, 1.0 if q else 2.0),
        "big_frame": lambda s: big_frame(s, 16 if q else 256),
        "multipart": lambda s: multipart(s, 20 if q else 200),
        "log_amp": lambda s: log_amp(s, 200 if q else 2000),
        "pipelined": lambda s: pipelined(s, 5000 if q else 20_000, 1.0 if q else 3.0),
        "ghosts": lambda s: ghosts(s, 100 if q else 1000),
        "garbage": lambda s: garbage(s, 40 if q else 400, a.garbage_wait),
        "idle": lambda s: idle(s, 50 if q else 500, a.idle_wait),
        "subs200": lambda s: subs200(s, 20 if q else 200, 2.0 if q else 5.0),
        "stalled": lambda s: stalled(s, 10 if q else 100, 2.0 if q else 5.0),
        "stopping": lambda s: stopping(s, 10 if q else 50),
    }


def run(a: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit()
    args = ("--model", "testsrc", "--width", str(a.width), "--height", str(a.height))
    chosen = {k: f for k, f in attacks(a).items() if not a.only or k in a.only.split(",")}
    results: dict[str, Any] = {}
    serve = Serve(*args)
    watcher = Watcher(serve.frames, serve.pid)
    time.sleep(2.0)
    try:
        for name, attack in chosen.items():
            if not serve.alive():  # a crash is a result; the next attack gets a fresh daemon
                watcher.stop()
                serve = Serve(*args)
                watcher = Watcher(serve.frames, serve.pid)
                time.sleep(2.0)
            rss0, t0 = serve.rss_mb(), time.monotonic()
            try:
                r = attack(serve)
            except Exception as exc:  # an attack that cannot finish says why, the rest still run
                r = {"error": f"{type(exc).__name__}: {exc}"}
            time.sleep(max(0.0, t0 + 1.0 - time.monotonic()))  # at least one second of frames to judge
            t1 = time.monotonic()
            alive = serve.alive() or name == "stopping"
            r.update(fps_min_1s=round(watcher.min_fps_1s(t0, t1), 1), fps=round(watcher.fps(t0, t1), 1),
                     max_gap_s=round(watcher.max_gap(t0, t1), 2), crashed=not alive,
                     rss_before_mb=round(rss0, 1),
                     rss_peak_mb=round(max(watcher.peak("VmRSS", t0, t1) / 1024, rss0), 1))
            if serve.alive():
                r["rss_after_mb"] = round(settle_rss(serve, a.settle), 1)
            results[name] = r
    finally:
        watcher.stop()
        serve.stop()
    return results


def short(name: str, r: dict) -> str:
    keep = {k: v for k, v in r.items() if k not in ("rss_before_mb", "fps")}
    return f"{name}: " + " ".join(f"{k}={v}" for k, v in keep.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated attack names")
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--garbage-wait", type=float, default=35.0, help="seconds before counting open garbage")
    ap.add_argument("--idle-wait", type=float, default=10.0, help="seconds idle peers wait before the fd count")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds of quiet before each RSS after")
    ap.add_argument("--quick", action="store_true", help="small counts for the test suite")
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args(argv)
    if a.quick:
        a.width, a.height, a.settle = 320, 192, 1.0
        a.garbage_wait, a.idle_wait = min(a.garbage_wait, 12.0), min(a.idle_wait, 2.0)
    results = run(a)
    print("transport attacks | " + " | ".join(short(k, r) for k, r in results.items()), flush=True)
    write_json(a.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
