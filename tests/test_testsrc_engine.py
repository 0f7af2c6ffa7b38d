"""The test pattern and the engine loop without sockets."""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest

from sfbridge.engine import Engine
from sfbridge.generators import GeneratorError, Steering, create_generator
from sfbridge.generators.base import Block, Generator
from sfbridge.generators.testsrc import TestSource
from sfbridge.steering import SteeringBox


def test_block_structure_and_determinism():
    s = Steering(prompt="a castle", seed=3, state_id=1)
    g1, g2 = TestSource(96, 64), TestSource(96, 64)
    g1.reset(s)
    g2.reset(s)
    blocks = [g1.next_block(s) for _ in range(3)]
    assert [len(b.frames) for b in blocks] == [9, 12, 12]
    assert [b.first_frame for b in blocks] == [0, 9, 21]
    assert blocks[0].frames.shape == (9, 64, 96, 3) and blocks[0].frames.dtype == np.uint8
    assert np.array_equal(g2.next_block(s).frames, blocks[0].frames)
    g1.reset(s)
    assert np.array_equal(g1.next_block(s).frames, blocks[0].frames)
    assert not np.array_equal(blocks[1].frames[0], blocks[1].frames[5])  # it moves


def test_prompt_seed_and_blend_change_pixels():
    g = TestSource(96, 64)
    a = Steering(prompt="a castle", seed=3, state_id=1)
    g.reset(a)
    base = g.next_block(a).frames[0]
    for other in (Steering(prompt="the sea", seed=3), Steering(prompt="a castle", seed=4)):
        g.reset(other)
        assert not np.array_equal(g.next_block(other).frames[0], base)
    # blend: the first blended block lies between the two prompts' colours
    g.reset(a)
    g.next_block(a)
    blend = Steering(prompt="the sea", seed=3, transition="blend", blend_blocks=4, prev_prompt="a castle",
                     since_block=1)
    assert blend.blend_alpha(1) == 0.25 and blend.blend_alpha(4) == 1.0 and blend.blend_alpha(9) == 1.0
    b = g.next_block(blend)
    assert b.info["blend_alpha"] == 0.25


def test_bad_resolution_is_a_clear_error():
    with pytest.raises(GeneratorError, match="resolution"):
        create_generator("testsrc", width=4, height=4)
    with pytest.raises(GeneratorError, match="unknown model 'nope'"):
        create_generator("nope")


class Flaky(Generator):
    """Fails on its second block once, to check the engine survives generator errors."""

    name = "flaky"
    width, height = 8, 8

    def __init__(self):
        self.calls = 0
        self.block = 0

    def reset(self, steering):
        self.block = 0

    def next_block(self, steering):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        b = Block(np.zeros((9 if self.block == 0 else 12, 8, 8, 3), np.uint8), self.block, 0, steering.state_id)
        self.block += 1
        return b


def run_engine(gen, n_blocks, timeout=5.0):
    box = SteeringBox(Steering(state_id=1))
    outbox, events = queue.Queue(), queue.Queue()
    eng = Engine(gen, box, outbox, events, max_ahead=100)
    eng.start()
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n_blocks and time.monotonic() < deadline:
        try:
            got.append(outbox.get(timeout=0.1))
        except queue.Empty:
            pass
    box.stop()
    eng.thread.join(5)
    evs = []
    while not events.empty():
        evs.append(events.get())
    return got, evs


def test_engine_survives_generator_errors():
    got, evs = run_engine(Flaky(), 3)
    assert len(got) == 3
    errors = [e for e in evs if e["type"] == "error"]
    assert errors and "CUDA out of memory" in errors[0]["message"]
    assert [e["type"] for e in evs].count("started") == 2  # the scene restarted after the failure


def test_engine_respects_max_ahead():
    box = SteeringBox(Steering(state_id=1))
    outbox, events = queue.Queue(), queue.Queue()
    eng = Engine(TestSource(32, 32), box, outbox, events, max_ahead=2)
    eng.start()
    time.sleep(0.5)
    assert outbox.qsize() == 2  # stopped at the limit instead of running ahead
    box.stop()
    eng.thread.join(5)


class BadShape(Flaky):
    """Returns frames of the wrong size: the engine must refuse them, not pass them on."""

    name = "badshape"

    def next_block(self, steering):
        self.calls += 1
        return Block(np.zeros((9, 4, 4, 3), np.uint8), 0, 0, steering.state_id)


class FailingReset(Flaky):
    name = "failing-reset"

    def reset(self, steering):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("reset failed (simulated)")
        self.block = 0


def test_engine_refuses_frames_of_the_wrong_shape():
    got, evs = run_engine(BadShape(), 1, timeout=1.5)
    assert got == []
    assert any(e["type"] == "error" and "expected [N, 8, 8, 3] uint8" in e["message"] for e in evs)


def test_engine_survives_a_failing_reset():
    got, evs = run_engine(FailingReset(), 2)
    assert len(got) == 2
    assert any(e["type"] == "error" and "reset failed" in e["message"] for e in evs)


def test_a_blend_sent_during_a_blend_continues_from_the_screen():
    from sfbridge.generators.testsrc import prompt_colors

    box = SteeringBox(Steering(prompt="A", state_id=1))
    g = TestSource(32, 32)
    snap = box.take()
    g.reset(snap.steering)
    g.next_block(snap.steering)  # block 0: A
    box.set_prompt("B", "blend", 4)
    for _ in range(2):  # blocks 1, 2: alpha 0.25, 0.5 of B
        g.next_block(box.take().steering)
    on_screen = g._last_colors.copy()
    assert np.allclose(on_screen, 0.5 * prompt_colors("B") + 0.5 * prompt_colors("A"))
    box.set_prompt("C", "blend", 4)
    g.next_block(box.take().steering)  # block 3: first block of the blend to C
    assert np.allclose(g._last_colors, 0.25 * prompt_colors("C") + 0.75 * on_screen)
    box.set_seed(5)  # a seed change does not restart the running blend
    g.next_block(box.take().steering)
    assert np.allclose(g._last_colors, 0.5 * prompt_colors("C") + 0.5 * on_screen)
