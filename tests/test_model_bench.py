"""The benchmark scripts parse their options and run their logic on CPU (tiny dry mode)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_gpu_bench_args_and_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    gpu = _load("bench_model_gpu")
    a = gpu.parse_args([])
    assert (a.height, a.width, a.dtype, a.cache, a.attn) == (480, 832, ["bf16", "fp16"], ["global", "rolling"],
                                                              ["sdpa", "flash"])
    with pytest.raises(SystemExit):
        gpu.parse_args(["--height", "100"])
    if not gpu.torch.cuda.is_available():
        assert gpu.main([]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert gpu.main(["--tiny", "--device", "cpu", "--blocks", "1", "--warmup", "0", "--dtype", "fp32",
                     "--cache", "rolling", "--window", "6", "--sink", "1"]) == 0
    out = capsys.readouterr().out
    assert "fp32  rolling  sdpa" in out and "flash" in out  # flash reported as skipped on CPU


def test_cpu_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    cpu = _load("bench_model_cpu")
    assert cpu.main(["--blocks", "14", "--samples", "2", "--width", "64", "--height", "32", "--window", "6"]) == 0
    assert "bytes equal: True" in capsys.readouterr().out
