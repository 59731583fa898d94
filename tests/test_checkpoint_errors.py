"""Bad input must raise a clear Python exception (naming the tensor/file), never crash."""

from __future__ import annotations

import json
import os
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
