"""Bad input must raise a clear Python exception (naming the tensor/file), never crash."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct

import numpy as np
import pytest

import gptoss
import safetensors_edit as st_edit
from gptoss import CheckpointError, ContextOverflowError


def _copy(src: str, tmp_path) -> str:
    dst = str(tmp_path / "ckpt")
    shutil.copytree(src, dst)
    return dst


def _shard(d: str) -> str:
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    return os.path.join(d, files[0])


def _rewrite_header(path: str, edit) -> None:
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    edit(hdr)
    new = json.dumps(hdr, separators=(",", ":")).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    # Keep the data section where it was relative to the header: pad or fail loudly.
    assert len(new) <= n, "edited header grew; test needs a different edit"
    new += b" " * (n - len(new))
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + new + raw[8 + n:])


@pytest.fixture
def ckpt(make_checkpoint, tmp_path):
    return _copy(make_checkpoint("tiny", 0, "hf"), tmp_path)


@pytest.fixture
def orig(make_checkpoint, tmp_path):
    return _copy(make_checkpoint("tiny", 0, "original"), tmp_path)


def test_truncated_file(ckpt):
    p = _shard(ckpt)
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(CheckpointError, match=r"past the end of the file.*|truncated"):
        gptoss.Model(ckpt)


def test_file_shorter_than_header_length_field(ckpt):
    with open(_shard(ckpt), "r+b") as f:
        f.truncate(5)
    with pytest.raises(CheckpointError, match="truncated"):
        gptoss.Model(ckpt)


def test_header_length_beyond_file(ckpt):
    p = _shard(ckpt)
    with open(p, "r+b") as f:
        f.write(struct.pack("<Q", os.path.getsize(p) + 10))
    with pytest.raises(CheckpointError, match="header length"):
        gptoss.Model(ckpt)


def test_corrupt_header_json(ckpt):
    p = _shard(ckpt)
    with open(p, "r+b") as f:
        f.seek(8)
        f.write(b"{\"oops\": [1, 2,,")
    with pytest.raises(CheckpointError, match="malformed JSON"):
        gptoss.Model(ckpt)


def _drop_tensor(d: str, name: str) -> None:
    """Rewrites the shard holding `name` without it (a valid file), and the index to match."""
    st_edit.edit_file(_shard(d), lambda ts: [t for t in ts if t[0] != name])
    index = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(index):
        idx = json.load(open(index))
        del idx["weight_map"][name]
        json.dump(idx, open(index, "w"))


def test_missing_tensor(ckpt):
    _drop_tensor(ckpt, "model.layers.1.self_attn.sinks")
    with pytest.raises(CheckpointError, match=r"missing tensor 'model.layers.1.self_attn.sinks'"):
        gptoss.Model(ckpt)


def test_wrong_shape(ckpt):
    def edit(h):
        h["model.layers.0.self_attn.sinks"]["shape"] = [2, 2]
    _rewrite_header(_shard(ckpt), edit)
    with pytest.raises(CheckpointError, match=r"'model.layers.0.self_attn.sinks'.*shape \[2, 2\], expected \[4\]"):
        gptoss.Model(ckpt)


def test_wrong_dtype(ckpt):
    def edit(h):
        t = h["model.layers.0.mlp.experts.down_proj_scales"]
        t["dtype"] = "I8"
    _rewrite_header(_shard(ckpt), edit)
    with pytest.raises(CheckpointError, match=r"down_proj_scales.*dtype I8, expected U8"):
        gptoss.Model(ckpt)


def test_inconsistent_byte_size(ckpt):
    def edit(h):
        t = h["lm_head.weight"]
        t["data_offsets"] = [t["data_offsets"][0], t["data_offsets"][1] - 2]
    _rewrite_header(_shard(ckpt), edit)
    with pytest.raises(CheckpointError, match="lm_head.weight.*does not match"):
        gptoss.Model(ckpt)


def test_error_names_the_file_in_original_layout(orig):
    _drop_tensor(orig, "block.0.mlp.gate.bias")
    with pytest.raises(CheckpointError, match=f"{orig}.*block.0.mlp.gate.bias"):
        gptoss.Model(orig)


def test_config_problems(ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        gptoss.Model(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        gptoss.Model(str(empty))
    with open(os.path.join(ckpt, "config.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(CheckpointError):
        gptoss.Model(ckpt)


def test_config_shape_mismatch_is_reported(ckpt):
    # A config that disagrees with the tensors (e.g. more experts) names the first bad tensor.
    p = os.path.join(ckpt, "config.json")
    cfg = json.load(open(p))
    cfg["num_local_experts"] = 6
    json.dump(cfg, open(p, "w"))
    with pytest.raises(CheckpointError, match=r"mlp.router.weight.*expected \[6, 64\]"):
        gptoss.Model(ckpt)


def test_bad_tokens_and_context(make_checkpoint):
    m = gptoss.Model(make_checkpoint("tiny", 0, "hf"), max_context=16)
    s = m.new_sequence()
    with pytest.raises(ValueError, match="empty"):
        s.prefill([])
    with pytest.raises(ValueError, match="out of range"):
        s.prefill([1, 2, 1024])
    with pytest.raises(ValueError, match="out of range"):
        s.prefill([-1])
    with pytest.raises(ValueError, match="integer"):
        s.prefill([1.5, 2.0])
    with pytest.raises((ValueError, OverflowError)):
        s.prefill([2 ** 70])
    assert len(s) == 0  # rejected calls change nothing
    s.prefill(list(range(10)))
    with pytest.raises(ContextOverflowError, match="context limit of 16"):
        s.prefill(list(range(7)))
    assert len(s) == 10
    with pytest.raises(ContextOverflowError):
        m.forward(list(range(17)))
    # A batch with one bad entry is rejected whole.
    a, b = m.new_sequence(), m.new_sequence()
    with pytest.raises(ValueError):
        m.step([(a, [1, 2]), (b, [5000])])
    assert len(a) == 0 and len(b) == 0
    with pytest.raises(ValueError, match="twice"):
        m.step([(a, [1]), (a, [2])])
    with pytest.raises(TypeError):
        s.decode([1, 2])


def test_invalid_options(make_checkpoint):
    d = make_checkpoint("tiny", 0, "hf")
    with pytest.raises(ValueError):
        gptoss.Model(d, max_context=0)
    with pytest.raises(ValueError):
        gptoss.Model(d, block_size=0)
    with pytest.raises(ValueError):
        gptoss.Model(d, device="tpu")
    with pytest.raises(RuntimeError, match="cuda"):
        gptoss.Model(d, device="cuda")


# ---------------------------------------------------------------- tensor data layout
def test_shifted_offsets_are_refused(ckpt):
    # Shifting one tensor by two bytes kept it in bounds with the right size: it used to load
    # half of its neighbour's bytes. Now the data must tile the data section exactly.
    def edit(h):
        t = h["model.layers.0.self_attn.sinks"]
        t["data_offsets"] = [t["data_offsets"][0] + 2, t["data_offsets"][1] + 2]
    _rewrite_header(_shard(ckpt), edit)
    with pytest.raises(CheckpointError, match=r"self_attn\.(sinks|.*).*(gap of 2 bytes|overlap)"):
        gptoss.Model(ckpt)


def test_two_tensors_sharing_bytes_are_refused(ckpt):
    def edit(h):
        h["model.layers.1.self_attn.sinks"]["data_offsets"] = list(h["model.layers.0.self_attn.sinks"]["data_offsets"])
    _rewrite_header(_shard(ckpt), edit)
    with pytest.raises(CheckpointError, match="overlap|gap"):
        gptoss.Model(ckpt)


def test_trailing_bytes_are_refused(ckpt):
    with open(_shard(ckpt), "ab") as f:
        f.write(b"\0" * 16)
    with pytest.raises(CheckpointError, match="cover only the first"):
        gptoss.Model(ckpt)


def test_misaligned_data_is_refused(ckpt):
    p = _shard(ckpt)
    raw = open(p, "rb").read()
    hdr, data = st_edit.split(raw)
    h = json.dumps(hdr)
    h += " " * ((1 - 8 - len(h)) % 8)  # the data starts one byte past 8-alignment
    open(p, "wb").write(st_edit.join(h, data, align=1))
    with pytest.raises(CheckpointError, match="not aligned"):
        gptoss.Model(ckpt)


def test_unused_tensor_is_refused(ckpt):
    st_edit.edit_file(_shard(ckpt), lambda ts: ts + [("model.layers.0.mlp.extra", "BF16", [4], b"\0" * 8)])
    idx_path = os.path.join(ckpt, "model.safetensors.index.json")
    idx = json.load(open(idx_path))
    idx["weight_map"]["model.layers.0.mlp.extra"] = os.path.basename(_shard(ckpt))
    json.dump(idx, open(idx_path, "w"))
    with pytest.raises(CheckpointError, match="1 tensor.*does not have: 'model.layers.0.mlp.extra'"):
        gptoss.Model(ckpt)


# ---------------------------------------------------------------- config values
def _edit_config(d: str, fn) -> None:
    p = os.path.join(d, "config.json")
    cfg = json.load(open(p))
    fn(cfg)
    with open(p, "w") as f:
        json.dump(cfg, f)  # NaN and Infinity are written as Python's json writes them


BAD_FLOATS = [float("nan"), float("inf"), -float("inf"), 0, 0.0, -1, -1e-3]


@pytest.mark.parametrize("key", ["beta_fast", "beta_slow", "factor", "original_max_position_embeddings"])
@pytest.mark.parametrize("value", BAD_FLOATS + [None, "x", True, [1]])
def test_bad_rope_scaling_value_names_the_key(ckpt, key, value):
    def edit(c):
        c["rope_scaling"][key] = value
        if key == "original_max_position_embeddings":
            c["initial_context_length"] = value
        if value is None:
            del c["rope_scaling"][key]
            c.pop("initial_context_length" if key == "original_max_position_embeddings" else "-", None)
    _edit_config(ckpt, edit)
    if value is None and key != "original_max_position_embeddings":  # absent: the default applies
        gptoss.Model(ckpt, max_context=16)
        return
    if value is None:  # absent from both places: the default (4096) applies too
        assert gptoss.Model(ckpt, max_context=16).config.initial_context_length == 4096
        return
    with pytest.raises(CheckpointError, match=f"config.json.*{key}"):
        gptoss.Model(ckpt)


@pytest.mark.parametrize("key,values", [
    ("rope_theta", BAD_FLOATS + [1, 1.0, 0.5, 1e39, "x"]),
    ("rms_norm_eps", BAD_FLOATS + [2.0, 1e-40, "x"]),
    ("swiglu_limit", BAD_FLOATS + [1e39, False]),
])
def test_bad_float_value_names_the_key(ckpt, key, values):
    for v in values:
        _edit_config(ckpt, lambda c: c.__setitem__(key, v))
        with pytest.raises(CheckpointError, match=f"config.json: invalid model config: {key}") as e:
            gptoss.Model(ckpt)
        assert "out of range" in str(e.value) or "must be a number" in str(e.value)


def test_bad_values_in_original_layout_name_the_key(orig):
    for key in ("rope_ntk_alpha", "rope_ntk_beta", "rope_scaling_factor", "rope_theta", "initial_context_length"):
        p = os.path.join(orig, "config.json")
        good = open(p).read()
        for v in (float("nan"), 0, -2):
            _edit_config(orig, lambda c: c.__setitem__(key, v))
            with pytest.raises(CheckpointError, match=key):
                gptoss.Model(orig)
        open(p, "w").write(good)


@pytest.mark.parametrize("path", ["sliding_window", "rope_theta", "rms_norm_eps", "head_dim", "swiglu_limit",
                                  "rope_scaling.factor", "rope_scaling.beta_fast", "rope_scaling.truncate"])
def test_null_values_are_refused(ckpt, path):
    # transformers reads some nulls in its own way (sliding_window: no window; factor: derived
    # from the context lengths): refused rather than guessed.
    def edit(c):
        *parents, key = path.split(".")
        for p in parents:
            c = c[p]
        c[key] = None
    _edit_config(ckpt, edit)
    with pytest.raises(CheckpointError, match=f"{path} is null"):
        gptoss.Model(ckpt)


def test_betas_must_be_ordered(ckpt):
    _edit_config(ckpt, lambda c: c["rope_scaling"].update(beta_fast=1.0, beta_slow=32.0))
    with pytest.raises(CheckpointError, match="beta_fast.*must not be below.*beta_slow"):
        gptoss.Model(ckpt)


def test_settings_given_twice_must_agree(ckpt):
    _edit_config(ckpt, lambda c: c["rope_scaling"].update(original_max_position_embeddings=8192))
    with pytest.raises(CheckpointError, match="initial_context_length = 4096 and "
                                              "rope_scaling.original_max_position_embeddings = 8192 disagree"):
        gptoss.Model(ckpt)
    _edit_config(ckpt, lambda c: c.update(initial_context_length=8192, experts_per_token=1))
    with pytest.raises(CheckpointError, match="num_experts_per_tok = 2 and experts_per_token = 1 disagree"):
        gptoss.Model(ckpt)


def test_unsupported_rope_and_model_types(ckpt):
    _edit_config(ckpt, lambda c: c["rope_scaling"].update(rope_type="linear"))
    with pytest.raises(CheckpointError, match="rope_scaling.rope_type 'linear' is not supported"):
        gptoss.Model(ckpt)
    _edit_config(ckpt, lambda c: (c["rope_scaling"].update(rope_type="yarn"), c.update(model_type="llama")))
    with pytest.raises(CheckpointError, match="model_type is 'llama'"):
        gptoss.Model(ckpt)
    _edit_config(ckpt, lambda c: (c.update(model_type="gpt_oss", rope_scaling=[1])))
    with pytest.raises(CheckpointError, match="rope_scaling must be an object"):
        gptoss.Model(ckpt)
    _edit_config(ckpt, lambda c: (c.update(rope_scaling={"rope_type": "yarn", "truncate": "false"})))
    with pytest.raises(CheckpointError, match="truncate.*must be true or false"):
        gptoss.Model(ckpt)


def test_rope_frequencies_match_transformers(ckpt):
    # The YaRN table from config.json as transformers computes it, including its default of
    # truncating when rope_scaling lacks "truncate" (which changes the table by ~2e-4 here).
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from gptoss.config import ModelConfig

    base = json.load(open(os.path.join(ckpt, "config.json")))
    variants = [{}, {"truncate": True}, {"truncate": None}, {"beta_fast": 8.0, "beta_slow": 2.0, "truncate": None},
                {"factor": 4.0, "original_max_position_embeddings": 1000, "truncate": None}]
    tables = []
    for v in variants:
        c = json.loads(json.dumps(base))
        c["rope_scaling"].update(v)
        c["rope_scaling"] = {k: x for k, x in c["rope_scaling"].items() if x is not None}
        c["initial_context_length"] = c["rope_scaling"]["original_max_position_embeddings"]
        inv, conc = ROPE_INIT_FUNCTIONS["yarn"](transformers.GptOssConfig(**json.loads(json.dumps(c))), "cpu")
        ours, our_conc = ModelConfig.from_dict(c).yarn()
        np.testing.assert_allclose(np.array(ours, np.float32), inv.numpy(), rtol=2e-6, atol=0)
        assert our_conc == pytest.approx(conc, rel=1e-12)
        tables.append(np.array(ours))
    assert np.abs(tables[0] - tables[2]).max() > 1e-5  # the truncate default matters here


# ---------------------------------------------------------------- sizes
def _load_in_child(path: str, timeout: float = 60.0) -> str:
    """Model(path) in a child process (a hang or crash fails the test instead of the suite)."""
    import subprocess
    import sys

    code = ("import sys, gptoss\n"
            "try:\n    gptoss.Model(sys.argv[1], max_context=16)\nexcept gptoss.CheckpointError as e:\n"
            "    print('CheckpointError:', e)\nelse:\n    print('loaded')\n")
    r = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_huge_head_dim_is_refused_at_once(ckpt, monkeypatch):
    # head_dim 10^9 used to hang building a 5*10^8-entry RoPE table before the tensors were seen.
    _edit_config(ckpt, lambda c: c.update(head_dim=10 ** 9))
    out = _load_in_child(ckpt)
    assert out.startswith("CheckpointError") and "absurdly large" in out, out
    # A size that is not absurd is checked against the tensors before anything is computed from it.
    from gptoss.config import ModelConfig

    def no_yarn(self):
        raise AssertionError("the RoPE table was built before the sizes were checked")
    monkeypatch.setattr(ModelConfig, "yarn", no_yarn)
    _edit_config(ckpt, lambda c: c.update(head_dim=10 ** 8))
    with pytest.raises(CheckpointError, match=r"q_proj.weight.*has shape \[256, 64\], expected \[400000000, 64\]"):
        gptoss.Model(ckpt)


@pytest.mark.parametrize("key,value", [("vocab_size", 10 ** 12), ("max_position_embeddings", 10 ** 15),
                                       ("sliding_window", 2 ** 40), ("num_hidden_layers", 10 ** 6),
                                       ("num_local_experts", 2 ** 31), ("intermediate_size", 2 ** 62)])
def test_absurd_sizes_are_refused(ckpt, key, value):
    _edit_config(ckpt, lambda c: c.update({key: value, "num_experts": value} if key == "num_local_experts"
                                          else {key: value}))
    with pytest.raises(CheckpointError, match="absurdly large"):
        gptoss.Model(ckpt)


def test_every_size_is_checked_against_the_tensors(ckpt):
    for key, value, why in [
        ("num_hidden_layers", 1, r"19 tensor\(s\).*does not have: 'model.layers.1"),
        ("num_hidden_layers", 3, "missing tensor 'model.layers.2"),
        ("vocab_size", 512, r"embed_tokens.weight.*\[1024, 64\], expected \[512, 64\]"),
        ("hidden_size", 32, r"embed_tokens.weight.*expected \[1024, 32\]"),
        ("intermediate_size", 32, r"gate_up_proj_blocks.*expected \[4, 64, 2, 16\]"),
        ("head_dim", 32, r"q_proj.weight.*expected \[128, 64\]"),
        ("num_attention_heads", 2, r"q_proj.weight.*expected \[128, 64\]"),
        ("num_key_value_heads", 1, r"k_proj.weight.*expected \[64, 64\]"),
        ("num_local_experts", 2, r"router.weight.*expected \[2, 64\]"),
    ]:
        p = os.path.join(ckpt, "config.json")
        good = open(p).read()
        _edit_config(ckpt, lambda c: c.update({key: value}, **(
            {"layer_types": ["sliding_attention", "full_attention", "sliding_attention"][:value]}
            if key == "num_hidden_layers" else {}), **({"num_experts_per_tok": 2, "experts_per_token": 2}
                                                     if key == "num_local_experts" else {})))
        with pytest.raises(CheckpointError, match=why):
            gptoss.Model(ckpt)
        open(p, "w").write(good)


def test_max_context_beyond_the_engines_limit(make_checkpoint):
    with pytest.raises(ValueError, match="below 2\\^31"):
        gptoss.Model(make_checkpoint("tiny", 0, "hf"), max_context=2 ** 40)


# ---------------------------------------------------------------- JSON files and the index
@pytest.mark.parametrize("text,why", [
    (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"x": "\xff"}', "not UTF-8"),
    (b'{"x": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b"", "not valid JSON"),
])
def test_malformed_config_json(ckpt, text, why):
    open(os.path.join(ckpt, "config.json"), "wb").write(text)
    with pytest.raises(CheckpointError, match=why):
        gptoss.Model(ckpt)


@pytest.fixture
def sharded(make_checkpoint, tmp_path):
    from gptoss.synthetic import write_checkpoint
    from conftest import tiny_config

    d = str(tmp_path / "sharded")
    write_checkpoint(tiny_config("tiny"), d, seed=0, layout="hf", hf_shards=2)
    return d


def test_index_must_match_the_shards(sharded):
    idx_path = os.path.join(sharded, "model.safetensors.index.json")
    good = json.load(open(idx_path))
    shards = sorted(set(good["weight_map"].values()))
    assert len(shards) == 2
    gptoss.Model(sharded, max_context=16)

    def with_index(edit, why):
        idx = json.loads(json.dumps(good))
        edit(idx)
        json.dump(idx, open(idx_path, "w"))
        with pytest.raises(CheckpointError, match=why):
            gptoss.Model(sharded)

    name = next(k for k, v in good["weight_map"].items() if v == shards[0])
    with_index(lambda i: i["weight_map"].__setitem__(name, shards[1]), f"shard {shards[0]} holds '{name}', which")
    with_index(lambda i: i["weight_map"].pop(name), f"holds '{name}', which the index does not list")
    with_index(lambda i: i["weight_map"].__setitem__("model.extra", shards[0]), "does not hold 'model.extra'")
    with_index(lambda i: i["weight_map"].__setitem__(name, "../" + shards[0]), "is not a file name")
    with_index(lambda i: i["weight_map"].__setitem__(name, "/dev/zero"), "is not a file name")
    with_index(lambda i: i["weight_map"].__setitem__(name, "nope.safetensors"), "shard nope.safetensors is missing")
    with_index(lambda i: i["weight_map"].__setitem__(name, 3), "must be a file name")
    with_index(lambda i: i.__setitem__("weight_map", []), "no 'weight_map' object")
    with_index(lambda i: i.__setitem__("weight_map", {}), "weight_map is empty")


def test_fifo_shard_does_not_block(ckpt):
    os.remove(os.path.join(ckpt, "model.safetensors.index.json"))
    os.mkfifo(os.path.join(ckpt, "model-fifo.safetensors"))
    out = _load_in_child(ckpt)
    assert out.startswith("CheckpointError") and "not a regular file" in out, out
