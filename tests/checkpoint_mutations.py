"""Random mutations of tiny checkpoints for the loader fuzz test (tests/checkpoint_fuzz.py).

A case is a deterministic function of (seed, index): one to three mutations of a base checkpoint
(config.json values and text, safetensors header JSON, offsets, dtypes, shapes, names, the length
field, data bytes, truncation, the index, missing or odd files), each noting whether it should
leave the checkpoint's meaning alone ("neutral") and whether it changes tensor bytes.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

INDEX = "model.safetensors.index.json"
DTYPES = ["BOOL", "F4", "U8", "I8", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64",
          "U64", "C64"]
# Keys that gptoss reads (in either layout): most value mutations go there.
READ_KEYS = {"num_hidden_layers", "num_local_experts", "num_experts", "num_experts_per_tok", "experts_per_token",
             "vocab_size", "hidden_size", "intermediate_size", "head_dim", "num_attention_heads",
             "num_key_value_heads", "sliding_window", "swiglu_limit", "initial_context_length", "rope_theta",
             "rope_scaling_factor", "rope_ntk_alpha", "rope_ntk_beta", "rms_norm_eps", "max_position_embeddings",
             "eos_token_id", "pad_token_id", "layer_types", "rope_scaling", "beta_fast", "beta_slow", "factor",
             "original_max_position_embeddings", "truncate", "rope_type", "model_type"}
# Keys of the HF config.json that gptoss does not read: any value there must not change anything.
IGNORED_KEYS = {"architectures", "attention_bias", "attention_dropout", "hidden_act", "initializer_range",
                "output_router_logits", "router_aux_loss_coef", "tie_word_embeddings", "torch_dtype",
                "transformers_version", "use_cache", "quantization_config"}


@dataclass
class Case:
    base: str                                  # "hf" (2 shards + index) or "original"
    files: dict[str, Optional[bytes]]          # relative path -> content (None: removed)
    special: dict[str, str] = field(default_factory=dict)  # path -> "fifo" | "dir" | "devzero"
    ops: list[str] = field(default_factory=list)
    neutral: bool = True                       # no mutation meant to change the meaning
    data_touched: bool = False                 # tensor bytes changed

    def note(self, desc: str, neutral: bool = False, data: bool = False) -> None:
        self.ops.append(desc)
        self.neutral = self.neutral and neutral
        self.data_touched = self.data_touched or data


# ---------------------------------------------------------------- helpers
def _shards(case: Case) -> list[str]:
    return sorted(p for p, b in case.files.items() if p.endswith(".safetensors") and b is not None)


def _split(raw: bytes) -> Optional[tuple[int, bytes, bytes]]:
    if len(raw) < 8:
        return None
    n = struct.unpack("<Q", raw[:8])[0]
    if n > len(raw) - 8:
        return None
    return n, raw[8:8 + n], raw[8 + n:]


def _header(raw: bytes) -> Optional[tuple[dict, bytes]]:
    s = _split(raw)
    if s is None:
        return None
    try:
        h = json.loads(s[1])
    except ValueError:
        return None
    def sane(t: Any) -> bool:  # what the mutations below can edit
        off = t.get("data_offsets") if isinstance(t, dict) else None
        return (isinstance(off, list) and len(off) == 2 and all(type(x) is int for x in off)
                and isinstance(t.get("shape"), list) and all(type(x) is int for x in t["shape"]))

    ok = isinstance(h, dict) and all(sane(v) for k, v in h.items() if k != "__metadata__")
    return (h, s[2]) if ok else None


def _join(h: Any, data: bytes, misalign: int = 0) -> bytes:
    text = (json.dumps(h, separators=(",", ":")) if not isinstance(h, (bytes, str)) else h)
    b = text.encode() if isinstance(text, str) else text
    b += b" " * ((misalign - 8 - len(b)) % 8)
    return struct.pack("<Q", len(b)) + b + data


def _interesting(rng: random.Random, v: Any) -> Any:
    pool: list[Any] = [0, -1, 1, 2, 3, 0.5, 1e-300, 1e300, 2 ** 31, 2 ** 31 - 1, 2 ** 63, 10 ** 9, 10 ** 30,
                       float("nan"), float("inf"), -float("inf"), None, True, False, "x", "", [], {}, [1]]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        pool += [v * 2, v + 1, v - 1, -v, v / 2, float(v), str(v), v * 1.0000001]
        if isinstance(v, float) and v.is_integer():
            pool.append(int(v))
    return rng.choice(pool)


def _paths(d: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append(prefix + (k,))
        if isinstance(v, dict) and len(prefix) < 2:
            out += _paths(v, prefix + (k,))
    return out


def _get_parent(d: dict, path: tuple) -> dict:
    for k in path[:-1]:
        d = d[k]
    return d


# ---------------------------------------------------------------- config.json
def _config(case: Case) -> Optional[dict]:
    try:
        cfg = json.loads(case.files.get("config.json") or b"")
    except (ValueError, RecursionError):
        return None
    return cfg if isinstance(cfg, dict) else None


def op_config_value(rng: random.Random, case: Case) -> None:
    cfg = _config(case)
    paths = _paths(cfg) if cfg is not None else []
    if not paths:
        return op_config_text(rng, case)
    read = [p for p in paths if p[-1] in READ_KEYS]
    path = rng.choice(read if read and rng.random() < 0.8 else paths)
    parent = _get_parent(cfg, path)
    old = parent[path[-1]]
    action = rng.random()
    if action < 0.15:
        del parent[path[-1]]
        desc, same = f"config: delete {'.'.join(map(str, path))}", False
    else:
        new = _interesting(rng, old)
        parent[path[-1]] = new
        same = type(new) is type(old) and new == old
        desc = f"config: {'.'.join(map(str, path))} = {new!r} (was {old!r})"
    neutral = same or path[0] in IGNORED_KEYS
    case.files["config.json"] = json.dumps(cfg).encode()
    case.note(desc, neutral=neutral)


def op_config_neutral(rng: random.Random, case: Case) -> None:
    cfg = _config(case)
    if cfg is None:
        return op_config_text(rng, case)
    if rng.random() < 0.5:
        cfg[f"zz_unknown_{rng.randrange(100)}"] = rng.choice([1, "x", [1, {"a": None}], {"nested": [1.5]}, None])
        desc = "config: add an unknown key"
    else:
        items = list(cfg.items())
        rng.shuffle(items)
        cfg = dict(items)
        desc = "config: reorder keys"
    case.files["config.json"] = json.dumps(cfg, indent=rng.choice([None, 1, 4])).encode()
    case.note(desc, neutral=True)


def op_config_text(rng: random.Random, case: Case) -> None:
    raw = bytearray(case.files.get("config.json") or b"{}")
    kind = rng.choice(["flip", "truncate", "insert", "duplicate", "nest", "utf8", "empty"])
    if kind == "flip" and raw:
        i = rng.randrange(len(raw))
        raw[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        raw = raw[:rng.randrange(len(raw) + 1)]
    elif kind == "insert":
        i = rng.randrange(len(raw) + 1)
        raw[i:i] = rng.choice([b",", b"}", b"{", b'"', b"\\", b"\x00", b"NaN", b"-", b"1e999"])
    elif kind == "duplicate":
        raw = bytearray(raw.replace(b'"vocab_size"', b'"vocab_size": 1024, "vocab_size"', 1)
                        .replace(b'"num_experts"', b'"num_experts": 4, "num_experts"', 1))
    elif kind == "nest":
        raw = bytearray(b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b", " + bytes(raw[1:]))
    elif kind == "utf8":
        raw = bytearray(raw.replace(b'"', b'"\xff', 1))
    else:
        raw = bytearray()
    case.files["config.json"] = bytes(raw)
    case.note(f"config.json text: {kind}")


# ---------------------------------------------------------------- safetensors headers
def _pick_shard(rng: random.Random, case: Case) -> Optional[str]:
    s = _shards(case)
    return rng.choice(s) if s else None


def op_header_neutral(rng: random.Random, case: Case) -> None:
    p = _pick_shard(rng, case)
    parsed = _header(case.files[p]) if p else None
    if parsed is None:
        return op_header_text(rng, case)
    h, data = parsed
    kind = rng.choice(["reorder", "pad", "metadata", "no-metadata", "null-metadata"])
    items = list(h.items())
    if kind == "reorder":
        rng.shuffle(items)
        h = dict(items)
        text = json.dumps(h, separators=(",", ":"))
    elif kind == "pad":
        text = json.dumps(h, indent=rng.choice([None, 2])) + " " * (8 * rng.randrange(1, 5))
    elif kind == "metadata":
        h["__metadata__"] = {"format": "pt", "note": rng.choice(["", "x", "\u00e9\u4e2d", "a\"b"])}
        text = json.dumps(h)
    elif kind == "no-metadata":
        h.pop("__metadata__", None)
        text = json.dumps(h)
    else:
        h["__metadata__"] = None
        text = json.dumps(h)
    case.files[p] = _join(text, data)
    case.note(f"{p} header: {kind}", neutral=True)


def op_header_tensor(rng: random.Random, case: Case) -> None:
    p = _pick_shard(rng, case)
    parsed = _header(case.files[p]) if p else None
    if parsed is None:
        return op_header_text(rng, case)
    h, data = parsed
    names = [k for k in h if k != "__metadata__"]
    if not names:
        return op_header_text(rng, case)
    name = rng.choice(names)
    t = h[name]
    kind = rng.choice(["dtype", "shape", "offsets", "swap-offsets", "swap-names", "rename", "drop-entry",
                       "drop-tensor", "add-tensor", "add-entry", "misalign", "metadata-bad", "odd-field"])
    desc = f"{p} tensor {name}: {kind}"
    neutral = False
    data_touched = False
    misalign = 0
    if kind == "dtype":
        t["dtype"] = rng.choice(DTYPES + ["Q8", "bf16", 1, None])
        desc += f" -> {t['dtype']}"
    elif kind == "shape":
        sh = list(t["shape"])
        how = rng.choice(["reverse", "flatten", "unsqueeze", "change", "negative", "float", "empty", "string"])
        if how == "reverse":
            sh = sh[::-1]
        elif how == "flatten":
            sh = [math.prod(sh)]
        elif how == "unsqueeze":
            sh.insert(rng.randrange(len(sh) + 1), 1)
        elif how == "change" and sh:
            i = rng.randrange(len(sh))
            sh[i] = max(0, sh[i] + rng.choice([-1, 1, sh[i]]))
        elif how == "negative" and sh:
            sh[0] = -sh[0]
        elif how == "float" and sh:
            sh[0] = float(sh[0])
        elif how == "empty":
            sh = []
        elif how == "string" and sh:
            sh[0] = str(sh[0])
        t["shape"] = sh
        desc += f" {how} -> {sh}"
    elif kind == "offsets":
        b, e = t["data_offsets"]
        how = rng.choice(["shift", "end", "begin", "huge", "negative", "float", "three"])
        k = rng.choice([1, 2, 8, e - b, -1, -2, -8])
        if how == "shift":
            t["data_offsets"] = [b + k, e + k]
        elif how == "end":
            t["data_offsets"] = [b, e + k]
        elif how == "begin":
            t["data_offsets"] = [b + k, e]
        elif how == "huge":
            t["data_offsets"] = [b, 2 ** 64 + e]
        elif how == "negative":
            t["data_offsets"] = [-b - 1, e]
        elif how == "float":
            t["data_offsets"] = [float(b), e]
        else:
            t["data_offsets"] = [b, e, e]
        desc += f" {how} {k} -> {t['data_offsets']}"
    elif kind == "swap-offsets":  # another tensor of the same byte size: a valid file, other meaning
        size = t["data_offsets"][1] - t["data_offsets"][0]
        same = [k for k in names if k != name and h[k]["data_offsets"][1] - h[k]["data_offsets"][0] == size]
        if not same:
            return op_header_text(rng, case)
        other = rng.choice(same)
        t["data_offsets"], h[other]["data_offsets"] = h[other]["data_offsets"], t["data_offsets"]
        desc += f" with {other}"
        data_touched = True  # the tensors' values change (bytes of one dtype read as another)
    elif kind == "swap-names":
        other = rng.choice(names)
        h[name], h[other] = h[other], h[name]
        desc += f" with {other}"
        neutral = other == name
        data_touched = not neutral
    elif kind == "rename":
        new = rng.choice([name + ".x", name.replace("layers.0", "layers.5").replace("block.0", "block.5"),
                          "", "__metadata__x", name.upper()])
        h[new] = h.pop(name)
        desc += f" -> {new!r}"
    elif kind == "drop-entry":
        del h[name]
    elif kind == "drop-tensor":  # a valid file without the tensor
        b, e = t["data_offsets"]
        del h[name]
        data = data[:b] + data[e:]
        for k in h:
            if k != "__metadata__" and h[k]["data_offsets"][0] >= e:
                h[k]["data_offsets"] = [x - (e - b) for x in h[k]["data_offsets"]]
    elif kind == "add-tensor":  # a valid file with one tensor more
        extra = rng.choice([name + ".extra", "model.layers.0.mlp.bonus", "block.0.extra", "lm_head.bias"])
        if extra in h:
            return op_header_text(rng, case)
        h[extra] = {"dtype": "BF16", "shape": [4], "data_offsets": [len(data), len(data) + 8]}
        data = data + bytes(8)
        desc += f" ({extra})"
    elif kind == "add-entry":
        h[name + ".ghost"] = {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}
    elif kind == "misalign":
        misalign = rng.choice([1, 2, 4])
        desc += f" by {misalign}"
    elif kind == "metadata-bad":
        h["__metadata__"] = rng.choice([{"k": 1}, [], "x", {"k": None}])
    else:  # fields the format does not define are ignored (as the library ignores them)
        t["comment"] = rng.choice([1, "x", [None]])
        neutral = True
    case.files[p] = _join(h, data, misalign)
    case.note(desc, neutral=neutral, data=data_touched)


def op_header_text(rng: random.Random, case: Case) -> None:
    p = _pick_shard(rng, case)
    if p is None:
        return op_config_text(rng, case)
    raw = bytearray(case.files[p])
    s = _split(bytes(raw))
    kind = rng.choice(["flip", "length", "cut", "duplicate", "utf8", "escape"])
    if s is None or kind == "length":
        n = struct.unpack("<Q", bytes(raw[:8]).ljust(8, b"\0"))[0]
        new = rng.choice([0, 1, n - 1, n + 1, n - 8, n + 8, 2 ** 63, 2 ** 64 - 1, len(raw), 100_000_001])
        raw[:8] = struct.pack("<Q", new % 2 ** 64)
        case.files[p] = bytes(raw)
        return case.note(f"{p}: header length {n} -> {new}")
    n, text, data = s
    if kind == "flip" and n:
        i = 8 + rng.randrange(n)
        raw[i] ^= 1 << rng.randrange(8)
        case.files[p] = bytes(raw)
    elif kind == "cut":
        case.files[p] = _join(text[:rng.randrange(n + 1)], data)
    elif kind == "duplicate":
        h = text.decode("utf-8", "replace")
        j = h.find('},"')
        case.files[p] = _join(h[:j + 2] + h[2:j + 2] + h[j + 2:] if j > 0 else h, data)
    elif kind == "utf8":
        case.files[p] = _join(text.replace(b'"', b'"\xc3', 1), data)
    else:
        case.files[p] = _join(text.replace(b'"', b'"\\ud800', 1), data)
    case.note(f"{p} header text: {kind}")


# ---------------------------------------------------------------- data and files
def op_data(rng: random.Random, case: Case) -> None:
    p = _pick_shard(rng, case)
    if p is None:
        return op_config_text(rng, case)
    raw = bytearray(case.files[p])
    kind = rng.choice(["flip", "flip", "truncate", "append"])
    if kind == "flip":
        s = _split(bytes(raw))
        if s is None or not s[2]:
            return
        start = 8 + s[0]
        for _ in range(rng.randrange(1, 8)):
            i = rng.randrange(start, len(raw))
            raw[i] ^= 1 << rng.randrange(8)
        case.files[p] = bytes(raw)
        return case.note(f"{p}: flip data bytes", data=True)
    k = rng.choice([1, 2, 8, 100, 4096, len(raw) - 5, len(raw)])
    case.files[p] = bytes(raw[:max(0, len(raw) - k)]) if kind == "truncate" else bytes(raw) + bytes(k)
    case.note(f"{p}: {kind} {k} bytes")


def op_index(rng: random.Random, case: Case) -> None:
    if case.files.get(INDEX) is None:
        return op_files(rng, case)
    try:
        idx = json.loads(case.files[INDEX])
        wm = idx["weight_map"]
        names = list(wm)
        shards = sorted(set(wm.values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        return op_files(rng, case)
    if not names:
        return op_files(rng, case)
    name = rng.choice(names)
    kind = rng.choice(["remap", "drop", "add", "bad-value", "metadata", "no-metadata", "delete", "text",
                       "weight-map-type", "reorder"])
    neutral = kind in ("metadata", "no-metadata", "delete", "reorder")
    if kind == "remap":
        wm[name] = rng.choice(shards)
        neutral = len(shards) == 1
    elif kind == "drop":
        del wm[name]
    elif kind == "add":
        wm["model.layers.9.ghost"] = shards[0]
    elif kind == "bad-value":
        wm[name] = rng.choice(["../" + shards[0], "", ".", "/dev/zero", "nope.safetensors", 1, None,
                               INDEX, "config.json", "sub/" + shards[0], shards[0] + "\0"])
    elif kind == "metadata":
        idx["metadata"] = {"total_size": rng.choice([0, -1, "x", 10 ** 20])}
    elif kind == "no-metadata":
        idx.pop("metadata", None)
    elif kind == "delete":  # then the directory's *.safetensors are the shards: the same files
        case.files[INDEX] = None
        return case.note("index: delete it", neutral=True)
    elif kind == "text":
        raw = bytearray(case.files[INDEX])
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        case.files[INDEX] = bytes(raw)
        return case.note("index: flip a byte")
    elif kind == "weight-map-type":
        idx["weight_map"] = rng.choice([[], "x", None, {}])
    else:
        items = list(wm.items())
        rng.shuffle(items)
        idx["weight_map"] = dict(items)
    case.files[INDEX] = json.dumps(idx).encode()
    case.note(f"index: {kind} ({name})", neutral=neutral)


def op_files(rng: random.Random, case: Case) -> None:
    shards = _shards(case)
    kind = rng.choice(["delete-shard", "delete-config", "empty-shard", "dir", "fifo", "devzero", "extra-empty",
                       "extra-copy"])
    if not shards and kind not in ("delete-config", "extra-empty"):
        return op_config_text(rng, case)
    p = rng.choice(shards) if shards else "model.safetensors"
    neutral = False
    if kind == "delete-shard":
        case.files[p] = None
    elif kind == "delete-config":
        case.files["config.json"] = None
    elif kind == "empty-shard":
        case.files[p] = b""
    elif kind in ("dir", "fifo", "devzero"):
        case.files[p] = None
        case.special[p] = kind
    elif kind == "extra-empty":  # a valid file holding nothing: ignored or harmless
        p = "model-extra.safetensors"
        case.files[p] = _join({}, b"")
        neutral = True
    else:  # a second file holding a tensor that is already in another one
        parsed = _header(case.files[shards[0]]) if shards else None
        names = [k for k in parsed[0] if k != "__metadata__"] if parsed else []
        if not names:
            return op_config_text(rng, case)
        h, data = parsed
        name = names[0]
        b, e = h[name]["data_offsets"]
        p = "model-extra.safetensors"
        case.files[p] = _join({name: dict(h[name], data_offsets=[0, e - b])}, data[b:e])
    case.note(f"files: {kind} {p}", neutral=neutral)


OPS: list[tuple[float, Callable[[random.Random, Case], None]]] = [
    (3, op_config_value), (1, op_config_neutral), (1, op_config_text), (1.5, op_header_neutral),
    (4, op_header_tensor), (1.5, op_header_text), (1.5, op_data), (1.5, op_index), (0.7, op_files),
]


def make_case(seed: int, index: int, bases: dict[str, dict[str, bytes]]) -> Case:
    rng = random.Random(f"{seed}:{index}")
    base = "hf" if index % 3 else "original"
    case = Case(base=base, files=dict(bases[base]))
    n = rng.choices([1, 2, 3], weights=[6, 3, 1])[0]
    weights, ops = zip(*OPS)
    for _ in range(n):
        rng.choices(ops, weights=weights)[0](rng, case)
    return case


def read_base(d: str) -> dict[str, bytes]:
    out = {}
    for f in sorted(os.listdir(d)):
        with open(os.path.join(d, f), "rb") as fh:
            out[f] = fh.read()
    return out


def materialize(case: Case, d: str) -> None:
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    for p, b in case.files.items():
        if b is not None:
            with open(os.path.join(d, p), "wb") as f:
                f.write(b)
    for p, kind in case.special.items():
        full = os.path.join(d, p)
        if kind == "dir":
            os.mkdir(full)
        elif kind == "fifo":
            os.mkfifo(full)
        else:
            os.symlink("/dev/zero", full)
