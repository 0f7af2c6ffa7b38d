"""Attention backends: the auto/forced choice as a pure function of the facts (every combination),
the backends that run on CPU against the fp32 reference, and the FA2/FA3 custom ops under
torch.compile(fullgraph=True) through their fake kernels."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from sfbridge.model import attention as A
from sfbridge.model.attention import AttentionBackendError, AttnFacts, attention, choose_backend

CAPS = [None, (7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ALL_FACTS = [AttnFacts(dev, cap if dev == "cuda" else None, dt, fa3, fa2, cudnn)
             for dev, cap, dt, fa3, fa2, cudnn in itertools.product(
                 ["cpu", "cuda", "mps"], CAPS, DTYPES, [False, True], [False, True], [False, True])
             if dev == "cuda" or cap is None]


def runs(backend: str, f: AttnFacts) -> bool:
    """The spec, written out independently of the module: who can run under which facts."""
    gpu_half = f.device_type == "cuda" and f.dtype in (torch.float16, torch.bfloat16)
    return {
        "fa3": gpu_half and f.capability is not None and f.capability[0] == 9 and f.fa3_installed,
        "cudnn": gpu_half and f.cudnn_attention,
        "fa2": gpu_half and f.capability is not None and f.capability >= (8, 0) and f.fa2_installed,
        "sdpa": True,
        "manual": True,
    }[backend]


def test_fact_combinations_cover_the_space() -> None:
    assert len(ALL_FACTS) == (2 + len(CAPS)) * len(DTYPES) * 8


@pytest.mark.parametrize("f", ALL_FACTS, ids=str)
def test_auto_picks_first_runnable_in_order(f: AttnFacts) -> None:
    name, reason = choose_backend("auto", f)
    assert name == next(b for b in ("fa3", "cudnn", "fa2", "sdpa") if runs(b, f))
    assert reason.startswith(f"auto on {f.device_type}") and str(f.dtype).removeprefix("torch.") in reason
    if f.device_type == "cuda":  # every backend that lost to the winner is named with its reason
        for loser in ("fa3", "cudnn", "fa2")[: ("fa3", "cudnn", "fa2", "sdpa").index(name)]:
            assert f"{loser}: needs" in reason


@pytest.mark.parametrize("f", ALL_FACTS, ids=str)
def test_forced_runs_or_names_what_is_missing(f: AttnFacts) -> None:
    for backend in ("fa3", "cudnn", "fa2", "flash", "sdpa", "manual"):
        canonical = "fa2" if backend == "flash" else backend
        if runs(canonical, f):
            name, reason = choose_backend(backend, f)
            assert name == canonical and f"--attn {backend}" in reason
            continue
        with pytest.raises(AttentionBackendError) as e:
            choose_backend(backend, f)
        msg = str(e.value)
        assert f"backend {canonical}" in msg
        if f.device_type != "cuda":
            assert "CUDA device" in msg and f"this is {f.device_type}" in msg
        if f.dtype == torch.float32:
            assert "fp16 or bf16 (got float32)" in msg
        if canonical == "fa3" and not f.fa3_installed:
            assert "flash_attn_interface" in msg
        if canonical == "fa2" and not f.fa2_installed:
            assert "flash_attn" in msg and "flash-attn" in msg
        if f.device_type == "cuda" and canonical == "fa3" and f.capability != (9, 0):
            assert "sm90" in msg
        if f.device_type == "cuda" and canonical == "fa2" and (f.capability or (0, 0)) < (8, 0):
            assert "sm80+" in msg


def test_named_machines() -> None:
    h100 = AttnFacts("cuda", (9, 0), torch.bfloat16, fa3_installed=True, fa2_installed=True, cudnn_attention=True)
    assert choose_backend("auto", h100)[0] == "fa3"
    no_fa3 = AttnFacts("cuda", (9, 0), torch.bfloat16, fa2_installed=True, cudnn_attention=True)
    assert choose_backend("auto", no_fa3)[0] == "cudnn"  # the case the issue names: FA2 must not win on Hopper
    rtx4090 = AttnFacts("cuda", (8, 9), torch.float16, fa3_installed=True, fa2_installed=True)
    assert choose_backend("auto", rtx4090)[0] == "fa2"  # FA3 is Hopper-only
    assert choose_backend("auto", AttnFacts("cuda", (9, 0), torch.float32, True, True, True))[0] == "sdpa"
    assert choose_backend("auto", AttnFacts("cpu", None, torch.bfloat16))[0] == "sdpa"
    with pytest.raises(ValueError, match="unknown attention backend"):
        choose_backend("xformers", h100)


def test_probe_on_this_machine() -> None:
    f = A.probe_facts("cpu", torch.float32)
    assert f == AttnFacts("cpu", None, torch.float32, A.fa3_func is not None, A.flash_attn_func is not None, False)
    assert A.explain_backend("auto", "cpu", torch.bfloat16)[0] == A.select_backend("auto", "cpu", torch.bfloat16)
    assert A.select_backend("auto", "cpu", torch.float32) == "sdpa"
    with pytest.raises(AttentionBackendError, match="flash-attn"):
        A.select_backend("flash", "cpu", torch.float16)


def _exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """float64 attention, written with matmul (not the einsum of manual_attention)."""
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
    w = torch.softmax(qd @ kd.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (w @ vd).transpose(1, 2)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("lq,lk,d", [(7, 11, 16), (24, 24, 64), (5, 40, 128)])
def test_cpu_backends_match_reference(dtype: torch.dtype, tol: float, lq: int, lk: int, d: int) -> None:
    g = torch.Generator().manual_seed(lq * 1000 + d)
    q, k, v = (torch.randn(2, n, 3, d, generator=g).to(dtype) for n in (lq, lk, lk))
    want = _exact(q, k, v)
    manual = attention(q, k, v, "manual")
    assert manual.dtype == dtype and manual.shape == q.shape
    assert (manual.double() - want).abs().max() < tol
    for backend in ("sdpa", A.select_backend("auto", "cpu", dtype)):
        out = attention(q, k, v, backend)
        assert out.dtype == dtype and out.shape == q.shape
        assert (out.double() - manual.double()).abs().max() < tol, backend


def test_cudnn_backend_really_restricts_sdpa() -> None:
    """On CPU there is no cuDNN kernel: if the restriction were not applied, plain SDPA would run."""
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(RuntimeError, match="No viable backend"):
        attention(q, q, q, "cudnn")


@pytest.mark.skipif(A.flash_attn_func is not None, reason="flash-attn installed")
def test_flash_op_without_package_is_a_clear_error() -> None:
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(AttentionBackendError, match="flash_attn is not importable"):
        attention(q, q, q, "fa2")


def test_flash_ops_fake_kernels_on_meta() -> None:
    q = torch.empty(2, 4680, 12, 128, device="meta", dtype=torch.bfloat16)
    kv = torch.empty(2, 32760, 12, 128, device="meta", dtype=torch.bfloat16)
    for backend in ("fa2", "fa3", "flash"):
        out = attention(q, kv, kv, backend)
        assert out.device.type == "meta" and out.shape == q.shape and out.dtype == q.dtype


def _graphs(fn, *args) -> tuple[torch.Tensor, list[torch.fx.GraphModule]]:
    """Compile with fullgraph=True (a graph break raises) through aot_eager; return the output and graphs."""
    from torch._dynamo.backends.common import aot_autograd

    seen: list[torch.fx.GraphModule] = []

    def record(gm, _inputs):
        seen.append(gm)
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(fn, fullgraph=True, backend=aot_autograd(fw_compiler=record))(*args)
    return out, seen


def _layer(backend: str):
    def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        q = (x @ w).unflatten(-1, (2, -1))  # [B, L, H, D]
        return attention(q, q.flip(1), q * 0.5, backend).flatten(2) + x
    return f


_ref_op = A.register_attention_op("sfbridge_test::ref", lambda: A.manual_attention, "none")


def test_custom_op_pattern_compiles_fullgraph_and_runs() -> None:
    """The FA2/FA3 registration pattern with a kernel that runs on CPU: one node, no graph break, same numbers."""
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(1, 9, 16, generator=g), torch.randn(16, 16, generator=g)

    def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        q = (x @ w).unflatten(-1, (2, -1))
        return _ref_op(q, q.flip(1), q * 0.5).flatten(2) + x

    out, graphs = _graphs(f, x, w)
    assert len(graphs) == 1
    assert "sfbridge_test.ref" in graphs[0].code
    torch.testing.assert_close(out, _layer("manual")(x, w), atol=0, rtol=0)


@pytest.mark.parametrize("backend", ["fa2", "fa3"])
def test_flash_ops_compile_fullgraph_on_meta(backend: str) -> None:
    x = torch.empty(1, 64, 256, device="meta", dtype=torch.float16)
    w = torch.empty(256, 256, device="meta", dtype=torch.float16)
    out, graphs = _graphs(_layer(backend), x, w)
    assert out.shape == x.shape and len(graphs) == 1 and f"sfbridge.{backend}" in graphs[0].code


def test_auto_selection_inside_a_compiled_graph() -> None:
    """select_backend is a constant to dynamo: a model that resolves 'auto' per call still has one graph."""
    x, w = torch.randn(1, 9, 16), torch.randn(16, 16)

    def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return _layer(A.select_backend("auto", x.device, x.dtype))(x, w)

    out, graphs = _graphs(f, x, w)
    assert len(graphs) == 1
    torch.testing.assert_close(out, _layer("sdpa")(x, w))


def test_generators_report_and_force_the_backend(tmp_path) -> None:  # noqa: ANN001
    """describe() (what `status` shows) names the backend and why; a forced one that cannot run is refused
    before anything loads; 'manual' really is what the tiny model runs (same stream as sdpa, within fp32 noise)."""
    import numpy as np
    from test_self_forcing_generator import TINY, build_tiny_model_dir

    from sfbridge.generators import GeneratorError, Steering, create_generator

    auto = create_generator("tiny", width=64, height=48, decoder="preview")
    d = auto.describe()
    assert d["attn"] == "sdpa" and d["attn_reason"].startswith("auto on cpu")
    manual = create_generator("tiny", width=64, height=48, decoder="preview", attn="manual")
    assert manual.describe()["attn"] == "manual" and "--attn manual" in manual.describe()["attn_reason"]
    assert manual.model.attn_backend == "manual"
    s = Steering(prompt="a red fox", seed=3)
    a, m = auto.next_block(s).frames, manual.next_block(s).frames
    assert np.abs(a.astype(int) - m.astype(int)).max() <= 1
    for bad, needle in (("fa3", "flash_attn_interface"), ("cudnn", "CUDA device"), ("flash", "flash-attn"),
                        ("xformers", "unknown attention backend")):
        with pytest.raises(GeneratorError, match=needle):
            create_generator("tiny", attn=bad)

    model_dir = build_tiny_model_dir(tmp_path)
    with pytest.raises(GeneratorError, match="fp16 or bf16"):
        create_generator("self-forcing", model_dir=str(model_dir), attn="fa2", warmup=False, **TINY)
    g = create_generator("self-forcing", model_dir=str(model_dir), attn="sdpa", warmup=False, **TINY)
    try:
        assert (g.describe()["attn"], g.pipe.model.attn_backend) == ("sdpa", "sdpa")
        assert "--attn sdpa" in g.describe()["attn_reason"]
    finally:
        g.close()


def test_doctor_says_which_backend_and_why(tmp_path, capsys) -> None:  # noqa: ANN001
    import json

    from sfbridge import cli

    cli.main(["doctor", "--model-dir", str(tmp_path)])
    out = capsys.readouterr().out
    want = A.explain_backend("auto", "cuda" if torch.cuda.is_available() else "cpu",
                             torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    assert "ok    attention" in out and f"{want[0]}: {want[1]}" in out
    assert "missing: attention" not in out
    cli.main(["doctor", "--model-dir", str(tmp_path), "--json", "--attn", "fa3"])
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["checks"]}
    if A.fa3_func is None:  # forcing a backend that cannot run makes doctor fail, naming the package
        assert rows["attention"]["ok"] is False and "flash_attn_interface" in rows["attention"]["detail"]
