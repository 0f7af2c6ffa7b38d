"""A test-pattern daemon never loads torch (about 200 MB of RSS that game developers pay on every testsrc run).

torch is imported only by the generators that need it (tiny, self-forcing) and the features that truly use it;
testsrc, including v2v input drawn under its pattern, is numpy and PIL only. The check is on a real
``sfbridge serve --model testsrc`` subprocess, after status, a prompt, v2v input mode and input frames that
reach the output: its memory map must hold no torch library and no module file of the torch package.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import zmq
from conftest import ServeProcess, free_port, sub_socket
from test_input_daemon import pub_socket, send

from sfbridge.client import Client
from sfbridge.protocol import unpack


def torch_mappings(pid: int) -> list[str]:
    """Files mapped by ``pid`` that belong to torch (its shared libraries: libtorch*, libc10*, _C)."""
    paths = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "/" in line}
    return sorted(p for p in paths if "/torch/" in p or "libtorch" in p or "libc10" in p)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_testsrc_daemon_with_v2v_input_never_imports_torch():
    inp = f"tcp://127.0.0.1:{free_port()}"
    d = ServeProcess("--model", "testsrc", "--width", "160", "--height", "96", "--input", inp)
    try:
        pid = d.proc.pid
        with Client(control=d.control, frames=d.frames, timeout=5.0) as c:
            assert c.status()["model"] == "testsrc"
            c.set_prompt("a red fox in the snow")
            assert c.request("input", mode="v2v", strength=0.5, motion_adaptive=True)["applies_at_block"] >= 0
            sub = sub_socket(zmq.Context.instance(), d.frames, "rgb24")
            pub = pub_socket(inp)
            img = np.full((96, 160, 3), 200, np.uint8)
            deadline, seq, shown = time.monotonic() + 20, 0, False
            while not shown and time.monotonic() < deadline:  # until an output frame names our input
                send(pub, img, seq, client="import-cost")
                seq += 1
                if sub.poll(50):
                    h = unpack(sub.recv_multipart()[1])
                    shown = h["input_mode"] == "v2v" and (h["input"] or {}).get("client") == "import-cost"
            pub.close()
            sub.close()
            assert shown, "no output frame came from the input within 20 s"
            assert c.status()["input"]["mode"] == "v2v"
        mapped = torch_mappings(pid)
        assert not mapped, f"the testsrc daemon loaded torch: {mapped[:5]}"
        print(f"testsrc daemon RSS after v2v input: {rss_mib(pid):.1f} MiB")
    finally:
        d.stop()
