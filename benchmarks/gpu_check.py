"""One short GPU run that measures what the CPU cannot: random weights at the real config (no download).

Sections, in priority order, each timed against one global budget (default 480 s) and each in its
own try/except (an error is recorded in the JSON and the next section runs):
 1. env: GPU, capability, memory, torch, attention backends;
 2. attention: microbench of each available backend, q 4680 / kv 32760 tokens, 12 heads x 128, bf16;
 3. eager: ms per steady-state block (window already full) and FPS, quality settings (21+3, 4 steps);
 4. decode: ms per steady-state block, Wan VAE vs TAEHV, to uint8 frames on the host;
 5. first_frame: reset -> first decoded frames on the host (eager, prompt already encoded);
 6. profile: one eager block under torch.profiler: kernel time by category, idle gaps between kernels;
 7. compiled: like 3 with ``compile=True``, plus compiles while the window fills and recompiles after;
 8. presets: each preset (compiled when 7 worked), its decoder, FP8 where it asks and the GPU allows.
Peak memory is recorded per section. Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out``.

    python benchmarks/gpu_check.py --out gpu_check_out             # on the GPU machine, <= 8 minutes
    python benchmarks/gpu_check.py --tiny --out /tmp/x              # dry run on CPU in seconds
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from sfbridge.model import attention as attn_mod
from sfbridge.model import presets
from sfbridge.model.config import ModelConfig, StreamConfig
from sfbridge.model.pipeline import StreamPipeline
from sfbridge.model.weights import random_model

from sfbridge.generators.streaming import FrameDecoder, TAEHVFrames, VAEFrames

log = logging.getLogger("gpu_check")
TINY = ModelConfig(dim=64, num_heads=2, num_layers=2, ffn_dim=128, text_dim=32, text_len=16)
FRAMES_PER_BLOCK = 12  # 3 latent frames -> 12 video frames once the stream runs
# kernel name fragments per category, first match wins (attention kernels can contain "gemm")
CATEGORIES = (("attention", ("flash", "fmha", "attention", "attn", "sdpa", "cudnn_mha")),
              ("matmul", ("gemm", "cutlass", "xmma", "cublas", "matmul", "_mm", "addmm", "conv", "linear")),
              ("copy", ("memcpy", "memset", "copy", "_to_copy", "clone", "cat")),
              ("norm/elementwise", ("elementwise", "norm", "reduce", "triton", "vectorized", "softmax", "gelu",
                                    "silu", "mul", "add", "sub", "div", "pow", "mean", "rsqrt", "cos", "sin",
                                    "index", "where", "clamp")))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for everything; late sections are skipped")
    ap.add_argument("--blocks", type=int, default=5, help="timed steady-state blocks per configuration")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; tiny: eager)")
    ap.add_argument("--tiny", "--dry-run", dest="tiny", action="store_true",
                    help="tiny config on CPU (seconds): checks the script, measures nothing real")
    ap.add_argument("--sections", nargs="*", help="only these sections (default: all)")
    a = ap.parse_args(argv)
    a.device = torch.device("cpu" if a.tiny else "cuda")
    a.dtype = torch.float32 if a.tiny else torch.bfloat16
    a.mcfg = TINY if a.tiny else ModelConfig()
    a.height, a.width = (16, 32) if a.tiny else (480, 832)
    a.compile_backend = a.compile_backend or ("eager" if a.tiny else "inductor")
    if a.tiny:
        a.blocks = min(a.blocks, 1)
        torch.set_num_threads(1)
    return a


class BudgetExhausted(RuntimeError):
    """The global time budget ran out inside a section (checked between blocks)."""


# -- helpers ---------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def counting_backend(inner: str) -> Any:
    """model/counters.py's CountingBackend around ``inner`` (counts every graph compiled), else ``inner``."""
    try:
        from sfbridge.model.counters import CountingBackend
    except ImportError:
        return inner
    return CountingBackend(inner)


def recompile_count(a: argparse.Namespace) -> int:
    """Graphs compiled so far: the counting backend's count, else dynamo's graph counter."""
    if hasattr(a.backend, "compiles"):
        return int(a.backend.compiles)
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def timed_ms(fn: Any, n: int, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return 1e3 * (time.perf_counter() - t0) / n


def make_pipeline(a: argparse.Namespace, model: torch.nn.Module, p: presets.Preset, compile: bool) -> StreamPipeline:
    cfg = StreamConfig(latent_h=a.height // 8, latent_w=a.width // 8, local_attn_size=p.window, sink_size=p.sink,
                       denoising_step_list=p.steps)
    kw = {"compile": True, "compile_backend": a.backend} if compile else {}
    if compile and "compile" not in inspect.signature(StreamPipeline).parameters:
        raise RuntimeError("this StreamPipeline has no compile option")
    pipe = StreamPipeline(model, cfg, **kw)
    pipe.set_prompt_embeds(torch.randn(1, model.cfg.text_len, model.cfg.text_dim, device=a.device))
    return pipe


def fill_window(pipe: StreamPipeline, steps: tuple[float, ...], deadline: float | None = None) -> None:
    """Run 1-step blocks until the window is full (same cache state and shapes as 4-step blocks), then one more.

    A compiled pipeline compiles here, one shape per block: the deadline is checked between blocks.
    """
    pipe.set_steps((1000,))
    F = pipe.cfg.num_frame_per_block
    while pipe.block_index * F <= pipe.cfg.cache_frames():
        if deadline is not None and time.perf_counter() > deadline:
            raise BudgetExhausted(f"time budget ran out while filling the window (block {pipe.block_index})")
        pipe.next_block()
    pipe.set_steps(steps)


def make_decoder(a: argparse.Namespace, name: str) -> FrameDecoder:
    from sfbridge.model.taehv import TAEHVConfig, TAEHVDecoder
    from sfbridge.model.vae import VAEConfig, WanVAEDecoder

    torch.manual_seed(0)
    if name == "vae":
        net = WanVAEDecoder(VAEConfig(dim=2, num_res_blocks=1) if a.tiny else VAEConfig())
        return VAEFrames(net.to(a.device, a.dtype).eval().requires_grad_(False))
    net = TAEHVDecoder(TAEHVConfig(n_f=(8, 8, 8, 8)) if a.tiny else TAEHVConfig())
    return TAEHVFrames(net.to(a.device, a.dtype).eval().requires_grad_(False))


def latents(a: argparse.Namespace) -> torch.Tensor:
    return torch.randn(1, 3, 16, a.height // 8, a.width // 8, device=a.device, dtype=a.dtype)


# -- sections --------------------------------------------------------------------------------


def sec_env(a: argparse.Namespace, st: dict) -> dict:
    d: dict[str, Any] = {"torch": torch.__version__, "device": str(a.device), "tiny": a.tiny}
    if a.device.type == "cuda":
        props = torch.cuda.get_device_properties(a.device)
        d.update(gpu=props.name, capability=list(torch.cuda.get_device_capability(a.device)),
                 memory_gib=round(props.total_memory / 2**30, 1), fp8_problems=presets.fp8_problems(a.device))
    d["attention_backends"] = [b for b in attn_mod.BACKENDS if b not in ("auto", "manual")]
    return d


def sec_attention(a: argparse.Namespace, st: dict) -> dict:
    lq, lk, h, d = (4680, 32760, 12, 128) if not a.tiny else (96, 480, 2, 32)
    q = torch.randn(1, lq, h, d, device=a.device, dtype=a.dtype)
    k, v = (torch.randn(1, lk, h, d, device=a.device, dtype=a.dtype) for _ in range(2))
    flop = 4 * lq * lk * h * d
    out: dict[str, Any] = {"shape": f"q {lq} / kv {lk} / {h}x{d}"}
    for b in attn_mod.BACKENDS:
        if b in ("auto", "manual"):
            continue
        try:
            if attn_mod.select_backend(b, a.device, a.dtype) in out:
                continue  # an alias of a backend already measured
            attn_mod.attention(q, k, v, b)  # warm-up / kernel selection
            ms = timed_ms(lambda b=b: attn_mod.attention(q, k, v, b), 3 if a.tiny else 20, a.device)
            out[b] = {"ms": round(ms, 3), "tflops": round(flop / ms / 1e9, 1)}
        except Exception as e:  # noqa: BLE001 - unavailable backends are a result, not a failure
            out[b] = {"error": f"{type(e).__name__}: {e}"[:300]}
    if a.device.type == "cuda":  # each SDPA kernel torch has, forced
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for kb in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            try:
                with sdpa_kernel([kb]):
                    ms = timed_ms(lambda: attn_mod.attention(q, k, v, "sdpa"), 20, a.device)
                out[f"sdpa:{kb.name.lower()}"] = {"ms": round(ms, 3), "tflops": round(flop / ms / 1e9, 1)}
            except Exception as e:  # noqa: BLE001
                out[f"sdpa:{kb.name.lower()}"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return out


def _model(a: argparse.Namespace, st: dict) -> torch.nn.Module:
    if st.get("model") is None:
        st["model"] = random_model(a.mcfg, seed=0, dtype=a.dtype, device=a.device)
    return st["model"]


def run_blocks(a: argparse.Namespace, pipe: StreamPipeline, p: presets.Preset, decoder: str | None = None) -> dict:
    """Fill the window, then time ``--blocks`` steady-state blocks (DiT; DiT + decode when ``decoder``)."""
    reset_peak(a.device)
    c0 = recompile_count(a)
    t0 = time.perf_counter()
    fill_window(pipe, p.steps, a.deadline)
    sync(a.device)
    r: dict[str, Any] = {"fill_s": round(time.perf_counter() - t0, 2),
                         "compiles_while_filling": recompile_count(a) - c0}
    c1 = recompile_count(a)
    ms = timed_ms(pipe.next_block, a.blocks, a.device)
    r.update(dit_ms=round(ms, 2), dit_fps=round(FRAMES_PER_BLOCK / ms * 1e3, 2))
    if decoder:
        dec = make_decoder(a, decoder)
        dec.push(pipe.next_block())
        e2e = timed_ms(lambda: dec.push(pipe.next_block()), a.blocks, a.device)
        r.update(e2e_serial_ms=round(e2e, 2), e2e_serial_fps=round(FRAMES_PER_BLOCK / e2e * 1e3, 2), decoder=decoder)
    r["recompiles_after_fill"] = recompile_count(a) - c1
    r["peak_gib"] = peak_gib(a.device)
    return r


def sec_eager(a: argparse.Namespace, st: dict) -> dict:
    p = presets.get("quality")
    return run_blocks(a, make_pipeline(a, _model(a, st), p, compile=False), p)


def sec_decode(a: argparse.Namespace, st: dict) -> dict:
    out = {}
    for name in ("vae", "taehv"):
        reset_peak(a.device)
        dec, x = make_decoder(a, name), latents(a)
        dec.push(x)  # first block of a scene (9 frames)
        ms = timed_ms(lambda dec=dec, x=x: dec.push(x), a.blocks, a.device)
        out[name] = {"ms": round(ms, 2), "fps": round(FRAMES_PER_BLOCK / ms * 1e3, 2), "peak_gib": peak_gib(a.device)}
    return out


def sec_first_frame(a: argparse.Namespace, st: dict) -> dict:
    """Reset -> the first block's frames on the host, with kernels already warm (as after serve's warm-up)."""
    pipe = make_pipeline(a, _model(a, st), presets.get("quality"), compile=False)
    out = {}
    for name in ("vae", "taehv"):
        dec = make_decoder(a, name)
        dec.push(pipe.next_block())  # warm-up
        pipe.reset(0)
        dec.reset()
        sync(a.device)
        t0 = time.perf_counter()
        frames = dec.push(pipe.next_block())
        out[name] = {"ms": round(1e3 * (time.perf_counter() - t0), 1), "frames": int(frames.shape[0])}
    return out


def categorize(name: str) -> str:
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


def sec_profile(a: argparse.Namespace, st: dict) -> dict:
    """One steady-state eager block: device time by kernel category and the idle gaps between kernels."""
    from torch.profiler import ProfilerActivity, profile

    p = presets.get("quality")
    pipe = make_pipeline(a, _model(a, st), p, compile=False)
    fill_window(pipe, p.steps, a.deadline)
    sync(a.device)
    cuda = a.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        pipe.next_block()
        sync(a.device)
        wall_ms = 1e3 * (time.perf_counter() - t0)
    events = [e for e in prof.events() if (e.device_type.name == "CUDA") == cuda and e.time_range.elapsed_us() > 0]
    if not cuda:  # CPU dry run: aten ops stand in for kernels
        events = [e for e in events if e.name.startswith("aten::") and not e.cpu_parent]
    by_cat: dict[str, float] = {}
    spans = sorted((e.time_range.start, e.time_range.end) for e in events)
    for e in events:
        cat = categorize(e.name)
        by_cat[cat] = by_cat.get(cat, 0.0) + e.time_range.elapsed_us() / 1e3
    gaps, end = [], None
    for s, e in spans:
        if end is not None and s > end:
            gaps.append((s - end) / 1e3)
        end = e if end is None else max(end, e)
    busy = sum(by_cat.values())
    return {"wall_ms": round(wall_ms, 2), "kernels": len(events), "kernel_ms": round(busy, 2),
            "ms_by_category": {k: round(v, 2) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
            "idle_ms": round(sum(gaps), 2), "idle_gaps": len(gaps), "largest_gaps_ms": sorted(gaps)[-5:][::-1]}


def sec_compiled(a: argparse.Namespace, st: dict) -> dict:
    p = presets.get("quality")
    r = run_blocks(a, make_pipeline(a, _model(a, st), p, compile=True), p)
    st["compile_ok"] = True
    return r


def sec_presets(a: argparse.Namespace, st: dict) -> dict:
    out: dict[str, Any] = {}
    for p in presets.PRESETS.values():
        if time.perf_counter() > a.deadline:
            out[p.name] = {"skipped": "time budget"}
            continue
        try:
            if p.name != "quality":  # other windows are other shapes: compile them afresh, within the limit
                torch._dynamo.reset()
            if p.fp8 != "off":  # FP8 converts the model in place: a fresh one, dropped afterwards
                st["model"] = None
                model = _model(a, st)
                fp8 = presets.apply_fp8(model, p.fp8, a.device)
            else:
                model, fp8 = _model(a, st), False
            pipe = make_pipeline(a, model, p, compile=bool(st.get("compile_ok")))
            out[p.name] = {"compiled": bool(st.get("compile_ok")), "fp8": fp8, **run_blocks(a, pipe, p, p.decoder)}
        except Exception as e:  # noqa: BLE001
            out[p.name] = {"error": f"{type(e).__name__}: {e}"[:500]}
    return out


SECTIONS = (("env", sec_env, 0), ("attention", sec_attention, 10), ("eager", sec_eager, 30),
            ("decode", sec_decode, 20), ("first_frame", sec_first_frame, 15), ("profile", sec_profile, 20),
            ("compiled", sec_compiled, 90), ("presets", sec_presets, 90))


def run(a: argparse.Namespace) -> dict:
    res: dict[str, Any] = {"budget_s": a.budget}
    st: dict[str, Any] = {}
    start = time.perf_counter()
    a.deadline = start + a.budget
    a.backend = counting_backend(a.compile_backend)
    for name, fn, min_s in SECTIONS:
        if a.sections and name not in a.sections:
            continue
        left = a.budget - (time.perf_counter() - start)
        if left < min_s:
            res[name] = {"skipped": f"time budget: {left:.0f} s left, needs ~{min_s} s"}
            continue
        t0 = time.perf_counter()
        try:
            res[name] = fn(a, st)
        except Exception as e:  # noqa: BLE001 - recorded; the next section still runs
            res[name] = {"error": f"{type(e).__name__}: {e}"[:500], "traceback": traceback.format_exc()[-1500:]}
        res[name]["section_s"] = round(time.perf_counter() - t0, 1)
        log.info("%s: %s", name, json.dumps(res[name], default=str)[:300])
    res["total_s"] = round(time.perf_counter() - start, 1)
    return res


def markdown(res: dict) -> str:
    """The human summary of ``res``: one table per section that has numbers."""
    env = res.get("env", {})
    lines = [f"# gpu_check: {env.get('gpu', env.get('device', '?'))}, torch {env.get('torch', '?')}"
             f"{' (tiny dry run, numbers meaningless)' if env.get('tiny') else ''}", "",
             f"total {res.get('total_s')} s of a {res.get('budget_s')} s budget", ""]
    lines += ["| configuration | DiT ms/block | DiT FPS | DiT+decode ms | FPS | peak GiB | compiles fill/after |",
              "|---|---|---|---|---|---|---|"]
    rows = [("eager, quality", res.get("eager", {})), ("compiled, quality", res.get("compiled", {}))]
    rows += [(f"preset {k}", v) for k, v in (res.get("presets") or {}).items() if isinstance(v, dict)]
    for label, r in rows:
        if "dit_ms" in r:
            lines.append(f"| {label}{' fp8' if r.get('fp8') else ''} | {r['dit_ms']} | {r['dit_fps']} | "
                         f"{r.get('e2e_serial_ms', '')} | {r.get('e2e_serial_fps', '')} | {r.get('peak_gib')} | "
                         f"{r.get('compiles_while_filling')}/{r.get('recompiles_after_fill')} |")
        elif r:
            lines.append(f"| {label} | {r.get('error') or r.get('skipped')} | | | | | |")
    lines += ["", "| attention backend | ms | TFLOPS |", "|---|---|---|"]
    for b, r in (res.get("attention") or {}).items():
        if isinstance(r, dict):
            lines.append(f"| {b} | {r.get('ms', r.get('error', ''))} | {r.get('tflops', '')} |")
    lines += ["", "| decoder | ms/block | FPS | first frame ms |", "|---|---|---|---|"]
    for name in ("vae", "taehv"):
        d, f = (res.get("decode") or {}).get(name, {}), (res.get("first_frame") or {}).get(name, {})
        lines.append(f"| {name} | {d.get('ms', '')} | {d.get('fps', '')} | {f.get('ms', '')} |")
    prof = res.get("profile") or {}
    if "ms_by_category" in prof:
        lines += ["", f"profile of one eager block: wall {prof['wall_ms']} ms, {prof['kernels']} kernels, "
                      f"{prof['kernel_ms']} ms in kernels, idle {prof['idle_ms']} ms in {prof['idle_gaps']} gaps", "",
                  "| category | ms |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in prof["ms_by_category"].items()]
    errors = [f"- {k}: {v.get('error') or v.get('skipped')}" for k, v in res.items()
              if isinstance(v, dict) and (v.get("error") or v.get("skipped"))]
    if errors:
        lines += ["", "Errors and skipped sections:", *errors]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if a.device.type == "cuda" and not torch.cuda.is_available():
        log.error("CUDA is not available (use --tiny for a dry run on CPU)")
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    res = run(a)
    (a.out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))
    md = markdown(res)
    (a.out / "gpu_check.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
