"""Pipelined decode (docs/SELF_FORCING.md, "Pipelining"): the decode of block k runs while the DiT makes
block k+1, and frame order, headers, reset, pause and error handling stay as with a serial decode.

The timed generator (benchmarks/bench_overlap.py) has a fixed DiT time and a decode of fixed or random
length in the real DecodeStage; its decoder writes each frame's number into the pixels from its own
streaming state, so a reordered or raced decode shows up as pixels that disagree with the header.
"""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest
import torch
from conftest import endpoints, load_benchmark

from sfbridge.client import Client
from sfbridge.daemon import Daemon, DaemonConfig
from sfbridge.engine import Engine
from sfbridge.generators.base import PendingFrames, Steering, resolve
from sfbridge.steering import SteeringBox

bench = load_benchmark("bench_overlap")


def serve(gen, **kw) -> tuple[Daemon, Client]:  # noqa: ANN001
    control, frames = endpoints()
    d = Daemon(DaemonConfig(control=control, frames=frames, pace="off", **kw), generator=gen).start()
    return d, Client(control=control, frames=frames, timeout=5.0)


def check_frame(f) -> None:  # noqa: ANN001
    """Header and pixels agree: the decoder made this frame as number `frame` of its scene."""
    assert f.frame == (0 if f.block == 0 else 9 + 12 * (f.block - 1)) + f.idx
    assert bench.frame_number(f.image) == f.frame, (f.header, bench.frame_number(f.image))


def test_overlapped_tiny_frames_equal_serial() -> None:
    from sfbridge.generators.tiny import TinyGenerator

    s = Steering(prompt="a castle", seed=3, state_id=1)
    runs = []
    for overlap in (False, True):
        g = TinyGenerator(width=64, height=32, decoder="vae")
        g.set_overlap(overlap)
        g.reset(s)
        blocks = [g.submit_block(s) for _ in range(3)]  # overlapped: several decodes in flight at once
        assert all(isinstance(b.frames, PendingFrames) == overlap for b in blocks)
        runs.append([(b.first_frame, resolve(b.frames)) for b in blocks])
        g.close()
    assert [f for f, _ in runs[1]] == [0, 9, 21]
    for (fa, a), (fb, b) in zip(*runs, strict=True):
        assert fa == fb and np.array_equal(a, b)


def test_engine_starts_the_next_dit_while_the_decode_runs() -> None:
    dit, dec, n = 0.04, 0.04, 16
    rates = {}
    for overlap in (False, True):
        box = SteeringBox(Steering(state_id=1))
        outbox: queue.Queue = queue.Queue()
        eng = Engine(bench.TimedGenerator(dit, dec, overlap=overlap), box, outbox, queue.Queue())
        eng.start()
        done = []
        while len(done) < n:  # a publisher that takes each block at once and waits for its frames
            blk = outbox.get(timeout=5)
            eng.notify()
            resolve(blk.frames)
            done.append(time.perf_counter())
        box.stop()
        eng.thread.join(5)
        rates[overlap] = (done[-1] - done[2]) / (n - 3)  # seconds per block after the start
    assert rates[False] > 0.9 * (dit + dec)
    assert rates[True] < 0.75 * (dit + dec), rates  # ideal: max(dit, dec) = half


def test_order_and_headers_under_a_slow_variable_decode() -> None:
    gen = bench.TimedGenerator(dit_s=0.005, decode_s=0.03, jitter=0.9, seed=1)
    d, c = serve(gen)
    try:
        got = []
        for f in c.subscribe("rgb24", latest_only=False, timeout=10):
            got.append(f)
            if len(got) == 80:
                break
    finally:
        c.close()
        d.stop()
    assert len({f.stream for f in got}) == 1
    for f in got:
        check_frame(f)
    keys = [(f.block, f.idx) for f in got]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    seqs = [f.seq for f in got]
    assert all(b > a for a, b in zip(seqs, seqs[1:], strict=False))


def test_reset_publishes_no_frame_of_the_old_scene_still_decoding() -> None:
    gen = bench.TimedGenerator(dit_s=0.01, decode_s=0.15)  # blocks wait in the decode stage
    d, c = serve(gen)
    try:
        sub = c.subscribe("rgb24", latest_only=False, timeout=10)
        old = next(f for f in sub if f.block >= 2).stream
        res = c.reset(prompt="another scene")
        t_reset = time.time()
        after = []
        for f in sub:
            after.append(f)
            if f.stream == res["stream"] and f.block >= 2:
                break
    finally:
        c.close()
        d.stop()
    stale = [f for f in after if f.stream == old]
    assert all(f.t_pub <= t_reset + 0.01 for f in stale), [(f.block, f.idx, f.t_pub - t_reset) for f in stale]
    new = [f for f in after if f.stream == res["stream"]]
    assert new[0].block == 0 and new[0].idx == 0 and new[0].state == res["state_id"]
    for f in new:  # the decoder was reset in order, behind the old scene's decodes
        check_frame(f)


def test_pause_with_blocks_in_flight_resumes_without_a_gap() -> None:
    gen = bench.TimedGenerator(dit_s=0.01, decode_s=0.08)
    d, c = serve(gen)
    try:
        sub = c.subscribe("rgb24", latest_only=False, timeout=10)
        next(f for f in sub if f.block >= 1)
        last = c.pause()["last_seq"]
        time.sleep(0.5)  # decodes in flight finish while paused; nothing may be published
        assert d.publisher.last_seq == last
        c.resume()
        f = next(f for f in sub if f.seq > last)
        assert f.seq == last + 1  # nothing skipped
        check_frame(f)
    finally:
        c.close()
        d.stop()


def test_a_failing_decode_is_an_error_and_a_new_scene() -> None:
    gen = bench.TimedGenerator(dit_s=0.01, decode_s=0.02, fail_on=(3,))  # block 2 of the first scene
    d, c = serve(gen)
    frames, events = [], []
    try:
        for m in c.subscribe("rgb24", latest_only=False, events=True, timeout=10):
            (events if isinstance(m, dict) else frames).append(m)
            if len({f.stream for f in frames}) == 2 and frames[-1].block >= 2:
                break
    finally:
        c.close()
        d.stop()
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and "decode 3 failed" in errors[0]["message"] and "block 2" in errors[0]["message"]
    assert [e["type"] for e in events].count("started") >= 1
    first, second = dict.fromkeys(f.stream for f in frames)
    assert {f.block for f in frames if f.stream == first} <= {0, 1}  # nothing of the failed block or after it
    new = [f for f in frames if f.stream == second]
    assert new[0].block == 0 and new[0].frame == 0
    for f in frames:
        check_frame(f)


def test_pipelining_adds_no_prompt_change_latency() -> None:
    res = bench.compare("timed", dit_ms=50, decode_ms=50, seconds=1.5, prompts=5)
    assert res["blocks_ratio"] > 1.4, bench.report(res)
    assert res["latency_ratio"] < 1.0, bench.report(res)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_streams_give_the_serial_frames() -> None:
    from sfbridge.model.pipeline import StreamPipeline
    from sfbridge.model.weights import random_model

    from sfbridge.generators.streaming import StreamingGenerator, VAEFrames
    from sfbridge.generators.tiny import TINY_CONFIG, TinyGenerator, random_vae, text_embedding

    class CudaTiny(StreamingGenerator):
        name = "tiny-cuda"

        def _embeds(self, prompt: str) -> torch.Tensor:
            return text_embedding(prompt, TINY_CONFIG.text_len, TINY_CONFIG.text_dim)

    s = Steering(prompt="a castle", seed=3, state_id=1)
    cfg = TinyGenerator(width=64, height=32).cfg
    runs = []
    for overlap in (False, True):
        pipe = StreamPipeline(random_model(TINY_CONFIG, seed=1).cuda(), cfg, seed=3)
        g = CudaTiny(pipe, VAEFrames(random_vae().cuda()), 64, 32, seed=3, overlap=overlap)
        g.reset(s)
        blocks = [g.submit_block(s) for _ in range(4)]
        runs.append([resolve(b.frames) for b in blocks])
        g.close()
    for a, b in zip(*runs, strict=True):
        assert np.array_equal(a, b)
