"""gptoss.synthetic: real layouts, names, shapes, dtypes, determinism, streaming memory."""

from __future__ import annotations

import filecmp
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")
if _PY not in sys.path:
    sys.path.insert(0, _PY)

from gptoss import synthetic as S  # noqa: E402
from gptoss.config import ModelConfig, preset  # noqa: E402

import numpy_reference as N  # noqa: E402

safetensors = pytest.importorskip("safetensors")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = _PY + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ----------------------------------------------------------------------------- tensor table
SPEC_20B_ORIGINAL = {  # spec §3 table, per block
    "attn.norm.scale": ("BF16", (2880,)),
    "attn.qkv.weight": ("BF16", (5120, 2880)),
    "attn.qkv.bias": ("BF16", (5120,)),
    "attn.sinks": ("BF16", (64,)),
    "attn.out.weight": ("BF16", (2880, 4096)),
    "attn.out.bias": ("BF16", (2880,)),
    "mlp.norm.scale": ("BF16", (2880,)),
    "mlp.gate.weight": ("BF16", (32, 2880)),
    "mlp.gate.bias": ("BF16", (32,)),
    "mlp.mlp1_weight.blocks": ("U8", (32, 5760, 90, 16)),
    "mlp.mlp1_weight.scales": ("U8", (32, 5760, 90)),
    "mlp.mlp1_bias": ("BF16", (32, 5760)),
    "mlp.mlp2_weight.blocks": ("U8", (32, 2880, 90, 16)),
    "mlp.mlp2_weight.scales": ("U8", (32, 2880, 90)),
    "mlp.mlp2_bias": ("BF16", (32, 2880)),
}
SPEC_20B_HF = {
    "input_layernorm.weight": ("BF16", (2880,)),
    "self_attn.q_proj.weight": ("BF16", (4096, 2880)),
    "self_attn.q_proj.bias": ("BF16", (4096,)),
    "self_attn.k_proj.weight": ("BF16", (512, 2880)),
    "self_attn.k_proj.bias": ("BF16", (512,)),
    "self_attn.v_proj.weight": ("BF16", (512, 2880)),
    "self_attn.v_proj.bias": ("BF16", (512,)),
    "self_attn.sinks": ("BF16", (64,)),
    "self_attn.o_proj.weight": ("BF16", (2880, 4096)),
    "self_attn.o_proj.bias": ("BF16", (2880,)),
    "post_attention_layernorm.weight": ("BF16", (2880,)),
    "mlp.router.weight": ("BF16", (32, 2880)),
    "mlp.router.bias": ("BF16", (32,)),
    "mlp.experts.gate_up_proj_blocks": ("U8", (32, 5760, 90, 16)),
    "mlp.experts.gate_up_proj_scales": ("U8", (32, 5760, 90)),
    "mlp.experts.gate_up_proj_bias": ("BF16", (32, 5760)),
    "mlp.experts.down_proj_blocks": ("U8", (32, 2880, 90, 16)),
    "mlp.experts.down_proj_scales": ("U8", (32, 2880, 90)),
    "mlp.experts.down_proj_bias": ("BF16", (32, 2880)),
}


def _nbytes(table: dict) -> int:
    return sum(math.prod(s) * (2 if d == "BF16" else 1) for d, s in table.values())


def test_expected_tensors_20b_match_spec():
    cfg = preset("gpt-oss-20b")
    orig = S.expected_tensors(cfg, "original")
    hf = S.expected_tensors(cfg, "hf")
    assert len(orig) == 363 and len(hf) == 459
    for n in range(24):
        for suffix, v in SPEC_20B_ORIGINAL.items():
            assert orig[f"block.{n}.{suffix}"] == v
        for suffix, v in SPEC_20B_HF.items():
            assert hf[f"model.layers.{n}.{suffix}"] == v
    for table, names in ((orig, ("embedding.weight", "norm.scale", "unembedding.weight")),
                         (hf, ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"))):
        assert table[names[0]] == ("BF16", (201088, 2880))
        assert table[names[1]] == ("BF16", (2880,))
        assert table[names[2]] == ("BF16", (201088, 2880))
        assert _nbytes(table) == 13_761_264_768  # spec §8
    # name mapping round trip
    for name in hf:
        assert S.hf_to_original_name(name) in orig


def test_expected_tensors_120b():
    cfg = preset("gpt-oss-120b")
    orig = S.expected_tensors(cfg, "original")
    hf = S.expected_tensors(cfg, "hf")
    assert len(orig) == 15 * 36 + 3 and len(hf) == 19 * 36 + 3
    assert orig["block.35.mlp.mlp1_weight.blocks"] == ("U8", (128, 5760, 90, 16))
    assert hf["model.layers.35.mlp.router.weight"] == ("BF16", (128, 2880))
    assert _nbytes(orig) == _nbytes(hf) == 65_248_815_744  # spec §8


def test_shard_plans_match_real_file_names():
    p = S.shard_plan(preset("gpt-oss-20b"), "hf")
    assert list(p) == [f"model-0000{i}-of-00002.safetensors" for i in range(3)]
    p = S.shard_plan(preset("gpt-oss-120b"), "hf")
    assert list(p) == [f"model-{i:05d}-of-00014.safetensors" for i in range(15)]
    assert list(S.shard_plan(preset("gpt-oss-20b"), "original")) == ["model.safetensors"]
    p = S.shard_plan(preset("gpt-oss-120b"), "original")
    assert list(p) == [f"model--{i:05d}-of-00007.safetensors" for i in range(1, 8)]
    for cfg in (preset("gpt-oss-20b"), preset("gpt-oss-120b")):
        for layout in ("hf", "original"):
            plan = S.shard_plan(cfg, layout)
            names = [n for v in plan.values() for n in v]
            assert sorted(names) == sorted(S.expected_tensors(cfg, layout))
    exp = S.expected_tensors(preset("gpt-oss-20b"), "hf")
    for names in S.shard_plan(preset("gpt-oss-20b"), "hf").values():
        assert 0 < _nbytes({k: exp[k] for k in names}) <= S.HF_MAX_SHARD_BYTES


# ----------------------------------------------------------------------------- files on disk
def _tiny(**kw) -> ModelConfig:
    return preset("tiny", **kw)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tiny"))
    S.write_checkpoint(_tiny(num_hidden_layers=3), d, seed=7, layout="both", hf_shards=2)
    return d


def _read_header(path: str) -> tuple[int, dict]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
    assert raw.decode("utf-8").rstrip(" ") == raw.decode("utf-8").rstrip()  # only space padding
    return n, json.loads(raw)


def _check_file(path: str, expect: dict) -> dict:
    """Parse with the safetensors package and with a plain JSON read; return {name: torch tensor}."""
    from safetensors import safe_open

    n, hdr = _read_header(path)
    assert (8 + n) % 8 == 0
    assert hdr.get("__metadata__") == {"format": "pt"}
    ents = sorted((v["data_offsets"], k) for k, v in hdr.items() if k != "__metadata__")
    off = 0
    for (b, e), k in ents:  # contiguous, no gaps or overlaps
        assert b == off
        off = e
        if hdr[k]["dtype"] == "BF16":
            assert (8 + n + b) % 2 == 0
    assert os.path.getsize(path) == 8 + n + off
    out = {}
    with safe_open(path, framework="pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            dt, shape = expect[k]
            assert tuple(t.shape) == shape, k
            assert str(t.dtype) == {"BF16": "torch.bfloat16", "U8": "torch.uint8"}[dt], k
            out[k] = t
    return out


def _load_dir(d: str, layout: str, cfg: ModelConfig) -> dict:
    expect = S.expected_tensors(cfg, layout)
    tensors = {}
    for fn in sorted(os.listdir(d)):
        if fn.endswith(".safetensors"):
            got = _check_file(os.path.join(d, fn), expect)
            assert not (set(got) & set(tensors))
            tensors.update(got)
    assert set(tensors) == set(expect)
    return tensors


def test_hf_layout_files(tiny_dir):
    cfg = _tiny(num_hidden_layers=3)
    files = sorted(f for f in os.listdir(tiny_dir) if f.endswith(".safetensors"))
    assert files == ["model-00000-of-00001.safetensors", "model-00001-of-00001.safetensors"]
    for f in ("config.json", "generation_config.json", "model.safetensors.index.json"):
        assert os.path.isfile(os.path.join(tiny_dir, f))
    with open(os.path.join(tiny_dir, "model.safetensors.index.json")) as f:
        idx = json.load(f)
    tensors = _load_dir(tiny_dir, "hf", cfg)
    assert set(idx["weight_map"]) == set(tensors)
    assert idx["metadata"]["total_size"] == _nbytes(S.expected_tensors(cfg, "hf"))
    from safetensors import safe_open
    for name, fn in idx["weight_map"].items():
        with safe_open(os.path.join(tiny_dir, fn), framework="pt") as f:
            assert name in f.keys()
    with open(os.path.join(tiny_dir, "config.json")) as f:
        cj = json.load(f)
    assert ModelConfig.from_dict(cj) == cfg
    assert cj["model_type"] == "gpt_oss" and cj["quantization_config"]["quant_method"] == "mxfp4"
    with open(os.path.join(tiny_dir, "generation_config.json")) as f:
        gc = json.load(f)
    assert gc["eos_token_id"] == [200002, 199999, 200012] and gc["bos_token_id"] == 199998


def test_original_layout_files(tiny_dir):
    cfg = _tiny(num_hidden_layers=3)
    d = os.path.join(tiny_dir, "original")
    assert sorted(os.listdir(d)) == ["config.json", "dtypes.json", "model.safetensors"]
    _load_dir(d, "original", cfg)
    with open(os.path.join(d, "config.json")) as f:
        oc = json.load(f)
    assert set(oc) == {"num_hidden_layers", "num_experts", "experts_per_token", "vocab_size", "hidden_size",
                       "intermediate_size", "swiglu_limit", "head_dim", "num_attention_heads",
                       "num_key_value_heads", "sliding_window", "initial_context_length", "rope_theta",
                       "rope_scaling_factor", "rope_ntk_alpha", "rope_ntk_beta"}
    assert ModelConfig.from_dict(oc).num_experts == cfg.num_experts
    with open(os.path.join(d, "dtypes.json")) as f:
        dt = json.load(f)
    assert set(dt) == set(S.expected_tensors(cfg, "original"))
    assert dt["block.0.mlp.mlp1_weight.blocks"] == "FP4" and dt["block.2.mlp.mlp2_weight.scales"] == "UE8"
    assert dt["block.0.attn.qkv.weight"] == "BF16"


def test_original_multi_file_names(tmp_path):
    files = S.write_checkpoint(_tiny(), str(tmp_path), layout="original", original_shards=3)
    assert [os.path.basename(f) for f in files] == [f"model--0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    _load_dir(str(tmp_path), "original", _tiny())


def test_in_memory_api_matches_files(tiny_dir):
    cfg = _tiny(num_hidden_layers=3)
    for layout, d in (("hf", tiny_dir), ("original", os.path.join(tiny_dir, "original"))):
        on_disk = _load_dir(d, layout, cfg)
        mem = dict(S.synthetic_tensors(cfg, seed=7, layout=layout))
        assert list(mem) == list(S.expected_tensors(cfg, layout))
        for k, a in mem.items():
            t = on_disk[k]
            if a.dtype == np.uint16:
                b = t.view(__import__("torch").int16).numpy().view(np.uint16)
            else:
                assert a.dtype == np.uint8
                b = t.numpy()
            np.testing.assert_array_equal(a, b, err_msg=k)


def test_layouts_hold_the_same_model():
    cfg = _tiny(num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2)
    hf = dict(S.synthetic_tensors(cfg, seed=3, layout="hf"))
    orig = dict(S.synthetic_tensors(cfg, seed=3, layout="original"))
    for n in range(2):
        for kind in ("weight", "bias"):
            qkv = np.concatenate([hf[f"model.layers.{n}.self_attn.{p}_proj.{kind}"] for p in "qkv"])
            np.testing.assert_array_equal(qkv, orig[f"block.{n}.attn.qkv.{kind}"])
    for name, a in hf.items():
        if "_proj." in name and "o_proj" not in name:
            continue
        np.testing.assert_array_equal(a, orig[S.hf_to_original_name(name)], err_msg=name)


def test_determinism(tmp_path):
    cfg = _tiny()
    a, b, c = (str(tmp_path / x) for x in "abc")
    S.write_checkpoint(cfg, a, seed=11, layout="both")
    S.write_checkpoint(cfg, b, seed=11, layout="both")
    S.write_checkpoint(cfg, c, seed=12, layout="both")
    for rel in ("model-00000-of-00000.safetensors", "model.safetensors.index.json", "config.json",
                "original/model.safetensors", "original/dtypes.json", "original/config.json"):
        assert filecmp.cmp(os.path.join(a, rel), os.path.join(b, rel), shallow=False), rel
    assert not filecmp.cmp(os.path.join(a, "original/model.safetensors"),
                           os.path.join(c, "original/model.safetensors"), shallow=False)


def test_chunked_generation_is_chunk_consistent(monkeypatch):
    # a tensor spanning several chunks and a slice starting mid-chunk (q/k/v split)
    cfg = _tiny()
    full = dict(S.synthetic_tensors(cfg, seed=5, layout="original"))
    monkeypatch.setattr(S, "CHUNK", 1000)
    small = dict(S.synthetic_tensors(cfg, seed=5, layout="original"))
    hf_small = dict(S.synthetic_tensors(cfg, seed=5, layout="hf"))
    assert set(full) == set(small)
    q = np.concatenate([hf_small[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"])
    np.testing.assert_array_equal(q, small["block.1.attn.qkv.weight"])
    for k in full:
        assert full[k].shape == small[k].shape


def test_value_distributions():
    cfg = _tiny(num_hidden_layers=2, hidden_size=256, intermediate_size=128, num_experts=4, vocab_size=2048)
    t = dict(S.synthetic_tensors(cfg, seed=0, layout="original"))
    f = {k: N.bf16_to_f64(v) for k, v in t.items() if v.dtype == np.uint16}
    for v in f.values():
        assert np.all(np.isfinite(v))
    assert abs(f["embedding.weight"].std() - 1.0) < 0.05
    assert abs(f["block.0.attn.qkv.weight"].std() * math.sqrt(256) - 1.0) < 0.1
    assert abs(f["block.0.attn.out.weight"].std() * math.sqrt(cfg.q_dim) - 1.0) < 0.1
    assert abs(f["block.1.attn.norm.scale"].mean() - 1.0) < 0.05 and 0.05 < f["block.1.attn.norm.scale"].std() < 0.2
    for k in ("block.0.attn.qkv.bias", "block.0.mlp.mlp1_bias", "block.0.mlp.mlp2_bias", "block.0.attn.out.bias"):
        assert 0.0 < np.abs(f[k]).mean() < 0.2 and np.count_nonzero(f[k]) > 0.9 * f[k].size
    sinks = np.concatenate([f[f"block.{n}.attn.sinks"] for n in range(2)])
    assert sinks.std() > 0.5
    # dequantized expert weights: std within a factor ~2 of 1/sqrt(fan_in)
    for w, fan_in in (("mlp1_weight", 256), ("mlp2_weight", 128)):
        sc = t[f"block.0.mlp.{w}.scales"]
        assert sc.max() - sc.min() == 2
        d = N.mxfp4_dequant(t[f"block.0.mlp.{w}.blocks"], sc)
        ratio = d.std() * math.sqrt(fan_in)
        assert 0.5 < ratio < 2.0, (w, ratio)
        nib = np.concatenate([t[f"block.0.mlp.{w}.blocks"] & 15, t[f"block.0.mlp.{w}.blocks"] >> 4]).ravel()
        assert np.bincount(nib, minlength=16).min() > 0.8 * nib.size / 16
    # router: clear winners
    x = np.random.default_rng(0).standard_normal((64, 256))
    logits = x @ f["block.0.mlp.gate.weight"].T + f["block.0.mlp.gate.bias"]
    assert 1.0 < logits.std() < 4.0


def test_cli_overrides(tmp_path):
    out = str(tmp_path / "ck")
    r = subprocess.run([sys.executable, "-m", "gptoss.synthetic", "--preset", "tiny", "--layers", "3",
                        "--experts", "8", "--experts-per-token", "3", "--vocab", "300", "--window", "5",
                        "--seed", "4", "--out", out, "--layout", "original", "--quiet"],
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(out, "config.json")) as f:
        oc = json.load(f)
    assert (oc["num_hidden_layers"], oc["num_experts"], oc["experts_per_token"], oc["vocab_size"],
            oc["sliding_window"]) == (3, 8, 3, 300, 5)
    cfg = ModelConfig.from_dict(oc)
    _load_dir(out, "original", cfg)
    mem = dict(S.synthetic_tensors(cfg, seed=4, layout="original"))
    raw = N.read_safetensors(os.path.join(out, "model.safetensors"))
    for k, a in mem.items():
        np.testing.assert_array_equal(raw[k][2], a)


def test_cli_vocab_override_drops_out_of_range_token_ids(tmp_path):
    out = str(tmp_path / "v")
    assert S.main(["--preset", "gpt-oss-20b", "--layers", "1", "--experts", "4", "--hidden", "64",
                   "--intermediate", "64", "--heads", "2", "--kv-heads", "1", "--vocab", "300",
                   "--out", out, "--quiet"]) == 0
    with open(os.path.join(out, "config.json")) as f:
        cj = json.load(f)
    assert cj["pad_token_id"] is None and cj["eos_token_id"] is None and cj["vocab_size"] == 300
    assert cj["sliding_window"] == 128 and cj["num_local_experts"] == 4


def test_cli_rejects_bad_config(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gptoss.synthetic", "--preset", "tiny", "--hidden", "65",
                        "--out", str(tmp_path / "x")], env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0


def test_streaming_memory_20b_one_layer(tmp_path):
    """Writing the gpt-oss-20b preset with one layer (2.8 GB) keeps peak RSS low."""
    out = str(tmp_path / "20b1")
    # VmHWM is the peak RSS of this process image (ru_maxrss would include the forking parent's)
    code = ("import sys; from gptoss.synthetic import main; rc = main(sys.argv[1:]); "
            "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]; "
            "print('MAXRSS_KB', hwm); sys.exit(rc)")
    try:
        r = subprocess.run([sys.executable, "-c", code, "--preset", "gpt-oss-20b", "--layers", "1",
                            "--out", out, "--quiet"], env=_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        rss_mb = int(r.stdout.split("MAXRSS_KB")[1].split()[0]) / 1024
        assert rss_mb < 400, f"peak RSS {rss_mb:.0f} MB"
        cfg = preset("gpt-oss-20b", num_hidden_layers=1)
        expect = S.expected_tensors(cfg, "hf")
        with open(os.path.join(out, "model.safetensors.index.json")) as f:
            idx = json.load(f)
        assert idx["metadata"]["total_size"] == _nbytes(expect)
        (fn,) = set(idx["weight_map"].values())
        assert fn == "model-00000-of-00000.safetensors"
        n, hdr = _read_header(os.path.join(out, fn))
        assert {k: (v["dtype"], tuple(v["shape"])) for k, v in hdr.items() if k != "__metadata__"} == expect
        assert os.path.getsize(os.path.join(out, fn)) == 8 + n + _nbytes(expect)
        from safetensors import safe_open
        with safe_open(os.path.join(out, fn), framework="pt") as f:
            t = f.get_slice("model.embed_tokens.weight")[:4]
            assert tuple(t.shape) == (4, 2880) and 0.5 < float(t.float().std()) < 1.5
    finally:
        import shutil
        shutil.rmtree(out, ignore_errors=True)
