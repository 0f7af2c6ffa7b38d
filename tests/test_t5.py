"""Text encoder: Wan UMT5 checkpoint -> transformers UMT5 golden parity, tokenizer folder loaded
offline like the real google/umt5-xxl, official prompt cleaning, LRU cache, strict-load errors."""

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from sfbridge.model.files import ModelFileError
from sfbridge.model.t5 import (
    TextEncoder,
    clean_prompt,
    load_tokenizer,
    tiny_tokenizer,
    umt5_from_wan_state_dict,
)

GOLDEN = Path(__file__).parent / "data" / "golden"
T5CFG = json.loads((GOLDEN / "metadata.json").read_text())["t5_config"]


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / "t5_io.safetensors"))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """A tokenizer folder shaped like google/umt5-xxl/ (spiece.model + tokenizer_config.json)."""
    d = tmp_path_factory.mktemp("umt5-xxl")
    tok = tiny_tokenizer(T5CFG["vocab"])
    (d / "spiece.model").write_bytes(tok.sp_model_proto)
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0}))
    return d


@pytest.fixture(scope="module")
def golden_encoder(tok_dir) -> TextEncoder:
    return TextEncoder.from_wan_files(
        GOLDEN / "t5_encoder.safetensors",
        tok_dir,
        eps=T5CFG["eps"],
        max_dist=T5CFG["max_dist"],
        text_len=T5CFG["seq_len"],
        dtype=torch.float32,
    )


def test_config_from_state_dict(golden_encoder):
    c = golden_encoder.model.config
    assert (c.vocab_size, c.d_model, c.d_ff, c.num_heads, c.num_layers) == (
        T5CFG["vocab"],
        T5CFG["dim"],
        T5CFG["dim_ffn"],
        T5CFG["num_heads"],
        T5CFG["num_layers"],
    )
    assert c.d_kv * c.num_heads == T5CFG["dim_attn"]
    assert c.relative_attention_num_buckets == T5CFG["num_buckets"]


def test_golden_raw_and_zeroed(golden_encoder, io):
    raw = golden_encoder.model(input_ids=io["ids"], attention_mask=io["mask"]).last_hidden_state
    torch.testing.assert_close(raw, io["encoder_raw"], atol=1e-4, rtol=1e-4)
    pe = golden_encoder.encode_ids(io["ids"], io["mask"])
    torch.testing.assert_close(pe, io["prompt_embeds"], atol=1e-4, rtol=1e-4)
    n = int(io["mask"].sum())
    assert n == T5CFG["real_tokens"] and (pe[:, n:] == 0).all()


def test_load_from_pth(tmp_path, tok_dir, io):
    torch.save(load_file(str(GOLDEN / "t5_encoder.safetensors")), tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    enc = TextEncoder.from_wan_files(
        tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", tok_dir, text_len=T5CFG["seq_len"], dtype=torch.float32
    )
    torch.testing.assert_close(enc.encode_ids(io["ids"], io["mask"]), io["prompt_embeds"], atol=1e-4, rtol=1e-4)


def test_bf16_close(tok_dir, io):
    sd = load_file(str(GOLDEN / "t5_encoder.safetensors"))
    model = umt5_from_wan_state_dict(sd, dtype=torch.bfloat16)
    enc = TextEncoder(model, load_tokenizer(tok_dir), text_len=T5CFG["seq_len"], dtype=torch.bfloat16)
    out = enc.encode_ids(io["ids"], io["mask"])
    assert out.dtype == torch.bfloat16
    assert (out.float() - io["prompt_embeds"]).abs().max() < 0.1


def test_tokenizer_folder_matches_sentencepiece(golden_encoder):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=tiny_tokenizer(T5CFG["vocab"]).sp_model_proto)
    ids, mask = golden_encoder.tokenize(["  a quick   brown fox  "])
    expect = sp.encode("a quick brown fox") + [1]  # + </s>
    assert ids[0, : len(expect)].tolist() == expect
    assert int(mask.sum()) == len(expect) and ids.shape == (1, T5CFG["seq_len"])
    assert (ids[0, len(expect) :] == 0).all()
    long_ids, long_mask = golden_encoder.tokenize(["fox " * 100])
    assert long_ids.shape[1] == T5CFG["seq_len"] and long_mask.all() and long_ids[0, -1] == 1


def test_clean_prompt():
    assert clean_prompt("  a\t cat &amp;amp; dog\n\n ") == "a cat & dog"
    assert clean_prompt("caf\u00c3\u00a9") == "caf\u00e9"  # ftfy repairs mojibake


def test_lru_cache_counts_encoder_calls():
    enc = TextEncoder.tiny_random(seed=1, dim=32, text_len=12, cache_size=2)
    a = enc.encode(["a cat", "a dog"])
    assert a.shape == (2, 12, 32) and enc.encoder_calls == 1
    b = enc.encode(["a  cat "])  # same cleaned text -> cache hit
    assert enc.encoder_calls == 1
    torch.testing.assert_close(b[0], a[0], atol=0, rtol=0)
    enc.encode(["a fox", "a cat", "a cat"])  # one new prompt, duplicates encoded once
    assert enc.encoder_calls == 2
    enc.encode(["a dog"])  # evicted (size 2: fox, cat kept)
    assert enc.encoder_calls == 3 and len(enc.cache) == 2


def test_tiny_random_is_seeded_and_offloads():
    e1 = TextEncoder.tiny_random(seed=3, offload_after_encode=True)
    e2 = TextEncoder.tiny_random(seed=3)
    out1 = e1.encode(["snow on a forest"])
    torch.testing.assert_close(out1, e2.encode(["snow on a forest"]), atol=0, rtol=0)
    assert next(e1.model.parameters()).device.type == "cpu"
    e1.cache.clear()
    torch.testing.assert_close(e1.encode(["snow on a forest"]), out1, atol=0, rtol=0)  # reloads after offload


def test_diffusers_text_encoder_folder(tmp_path, tok_dir):
    enc = TextEncoder.tiny_random(seed=4, vocab=T5CFG["vocab"], dim=32, text_len=10)
    enc.model.save_pretrained(tmp_path / "text_encoder")
    again = TextEncoder.from_pretrained_dir(tmp_path / "text_encoder", tok_dir, text_len=10, dtype=torch.float32)
    ids, mask = enc.tokenize(["a cat"])
    torch.testing.assert_close(again.encode_ids(ids, mask), enc.encode_ids(ids, mask), atol=1e-6, rtol=1e-6)


def _err(tmp_path, sd, tok_dir, *needles):
    p = tmp_path / "t5.safetensors"
    save_file(sd, str(p))
    with pytest.raises(ModelFileError) as e:
        TextEncoder.from_wan_files(p, tok_dir, dtype=torch.float32)
    for n in (str(p), *needles):
        assert n in str(e.value), str(e.value)


def test_strict_load_errors(tmp_path, tok_dir):
    sd = load_file(str(GOLDEN / "t5_encoder.safetensors"))
    bad = dict(sd)
    del bad["blocks.1.ffn.fc2.weight"]
    _err(tmp_path, bad, tok_dir, "encoder.block.1.layer.1.DenseReluDense.wo.weight", "missing")
    bad = dict(sd, **{"blocks.0.attn.extra.weight": torch.zeros(1)})
    _err(tmp_path, bad, tok_dir, "blocks.0.attn.extra.weight", "unexpected")
    bad = dict(sd, **{"blocks.1.norm2.weight": torch.zeros(5)})
    _err(tmp_path, bad, tok_dir, "layer.1.layer_norm.weight", "shape")
    _err(tmp_path, {"x": torch.zeros(1)}, tok_dir, "token_embedding.weight")
    with pytest.raises(ModelFileError, match="tokenizer folder not found"):
        load_tokenizer(tmp_path / "nope")


def test_encode_cleans_once_like_official():
    """encode() == encode_ids(tokenize(prompt)): the LRU key is the cleaned text and must not be
    cleaned a second time (cleaning is not idempotent: with a '<' in the text ftfy leaves entities
    alone and the two html.unescape passes strip two levels per cleaning)."""
    enc = TextEncoder.tiny_random(seed=5, text_len=24)
    prompt = "a <b> fox &amp;amp;amp; dog"
    assert clean_prompt(prompt) == "a <b> fox &amp; dog"
    assert clean_prompt(clean_prompt(prompt)) == "a <b> fox & dog"
    ids, mask = enc.tokenize([prompt])
    assert not torch.equal(ids, enc.tokenize(["a <b> fox & dog"])[0])  # the two texts tokenize differently
    torch.testing.assert_close(enc.encode([prompt]), enc.encode_ids(ids, mask), atol=0, rtol=0)


def _padded_path(enc: TextEncoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Today's official computation: the encoder on all L positions, then the padding rows zeroed."""
    x = enc.model(input_ids=ids, attention_mask=mask).last_hidden_state
    return x * mask[..., None].to(x.dtype)


@contextlib.contextmanager
def _seen_lengths(enc: TextEncoder) -> Iterator[list[int]]:
    """Sequence lengths the encoder stack actually runs on, while the block is open."""
    seen: list[int] = []
    h = enc.model.encoder.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["input_ids"].shape[1]),
                                                    with_kwargs=True)
    try:
        yield seen
    finally:
        h.remove()


def test_encodes_only_real_tokens_same_rows_as_padded():
    """A batch of prompts of different lengths at the official text_len 512: the encoder sees only
    [B, longest], the real rows equal the padded computation within 1e-5 (fp32), padding rows are 0."""
    enc = TextEncoder.tiny_random(seed=6, dim=64, num_heads=4, num_layers=3, text_len=512)
    prompts = ["a cat", "waves crash over dark rocks at sunset and a red car drives through a rainy neon city",
               "snow falls on a quiet forest"]
    ids, mask = enc.tokenize(prompts)
    lens = mask.sum(1).tolist()
    assert ids.shape == (3, 512) and max(lens) < 64 and len(set(lens)) == 3
    with _seen_lengths(enc) as seen:
        new = enc.encode_ids(ids, mask)
        out = enc.encode(prompts)  # the public path: same rows, official shape, the LRU keeps real rows only
    assert seen == [max(lens)] * 2
    old = _padded_path(enc, ids, mask)
    assert new.shape == old.shape == (3, 512, 64)
    err = (new - old).abs().max().item()
    assert err < 1e-5, err
    for row, n in zip(new, lens, strict=True):
        assert (row[n:] == 0).all() and (row[:n].abs().sum(-1) > 0).all()
    torch.testing.assert_close(out, new, atol=0, rtol=0)
    assert [enc.cache[k].shape[0] for k in enc.cache] == lens
    one = enc.encode([prompts[0] + " "])  # cache hit, padded back to text_len
    assert one.shape == (1, 512, 64) and enc.encoder_calls == 2
    torch.testing.assert_close(one[0], old[0], atol=1e-5, rtol=0)


def test_golden_real_tokens_only(golden_encoder, io):
    with _seen_lengths(golden_encoder) as seen:
        pe = golden_encoder.encode_ids(io["ids"], io["mask"])
    assert seen == [T5CFG["real_tokens"]] and io["ids"].shape[1] == T5CFG["seq_len"] > T5CFG["real_tokens"]
    assert (pe - _padded_path(golden_encoder, io["ids"], io["mask"])).abs().max() < 1e-5
    torch.testing.assert_close(pe, io["prompt_embeds"], atol=1e-4, rtol=1e-4)


def test_left_padded_mask_is_refused():
    enc = TextEncoder.tiny_random(seed=7, text_len=8)
    ids, mask = enc.tokenize(["a cat"])
    with pytest.raises(AssertionError, match="right-padded"):
        enc.encode_ids(ids.flip(1), mask.flip(1))


def test_text_encoder_benchmark(capsys):
    """benchmarks/bench_text_encoder.py: both paths timed side by side and equal in fp32; its meta-device
    TFLOP count at the real umt5-xxl config equals the matmul count written out by hand."""
    import importlib.util
    import re

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_text_encoder.py"
    spec = importlib.util.spec_from_file_location("bench_text_encoder", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--d-model", "32", "--d-ff", "64", "--heads", "4", "--layers", "1", "--repeats", "1",
                       "--text-len", "64", "--dtype", "fp32", "--no-flops"]) == 0
    out = capsys.readouterr().out
    assert "before: padded to  64 tokens" in out and "after:  real tokens only  20" in out
    assert float(re.search(r"speed-up: ([\d.]+)x", out).group(1)) > 0
    assert float(re.search(r"max \|after - before\| on the rows: (\S+)", out).group(1)) < 1e-5

    def by_hand(t: int, d: int = 4096, inner: int = 64 * 64, ff: int = 10240, layers: int = 24) -> float:
        linear = 4 * d * inner + 3 * d * ff  # q, k, v, o + gated FFN (wi_0, wi_1, wo)
        return layers * (2 * t * linear + 2 * 2 * t * t * inner) / 1e12  # + q k^T and attn v

    for t in (512, 20):
        assert bench.count_tflop(t) == pytest.approx(by_hand(t), rel=1e-9)
