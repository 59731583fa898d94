"""Model configuration: read from a checkpoint's `config.json` (HF or `original/` layout) or a preset.

Every dimension the engine uses comes from here; nothing about the real models is hard-coded
in the runtime. Field names follow the HF `config.json` where one exists.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import CheckpointError

__all__ = ["ModelConfig", "PRESETS", "preset", "load_json", "CheckpointError"]


_MAX_SIZE = 2 ** 31 - 1  # sizes index int32 tables in the engines
_MAX_LAYERS = 1 << 16    # gpt-oss-120b has 36; a per-layer list is built before the tensors are seen
_FLOAT32_MAX = 3.4028234663852886e38

_SIZE_FIELDS = ("num_hidden_layers", "num_experts", "experts_per_token", "vocab_size", "hidden_size",
                "intermediate_size", "head_dim", "num_attention_heads", "num_key_value_heads",
                "sliding_window", "initial_context_length", "max_position_embeddings")

# Sane ranges of the float settings: (low, low excluded, high). The RoPE/YaRN formulas divide by
# log(rope_theta) and take logs of the betas; the engines compute in float32.
_FLOAT_RANGES = {
    "rope_theta": (1.0, True, _FLOAT32_MAX),
    "rope_scaling_factor": (1.0, False, _FLOAT32_MAX),
    "rope_ntk_alpha": (0.0, True, _FLOAT32_MAX),
    "rope_ntk_beta": (0.0, True, _FLOAT32_MAX),
    "rms_norm_eps": (1e-30, False, 1.0),  # nonzero in float32
    "swiglu_limit": (1e-30, False, _FLOAT32_MAX),  # nonzero in float32
}

# Where a field differs from its key in the HF config.json, messages name both.
_HF_KEYS = {
    "num_experts": "num_local_experts",
    "experts_per_token": "num_experts_per_tok",
    "initial_context_length": "rope_scaling.original_max_position_embeddings",
    "rope_scaling_factor": "rope_scaling.factor",
    "rope_ntk_alpha": "rope_scaling.beta_slow",
    "rope_ntk_beta": "rope_scaling.beta_fast",
    "rope_truncate": "rope_scaling.truncate",
}


def _finite(v: float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def _show(v: Any) -> str:
    """repr(v) clipped for an error message."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _key(field: str) -> str:
    return f"{field} (HF: {_HF_KEYS[field]})" if field in _HF_KEYS else field


def _same(a: Any, b: Any) -> bool:
    """Two settings of one key agree (4096 and 4096.0 do; a bool is not a number)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def load_json(path: str, what: str) -> Any:
    """A JSON file of a checkpoint; anything wrong with it (missing, unreadable, not UTF-8, not
    JSON, nested absurdly deep, a key given twice) raises CheckpointError naming it."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} not found") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: {what} is not UTF-8 ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: {what} is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, a duplicate key, an integer of over 4300 digits
        raise CheckpointError(f"{path}: {what} is not valid JSON ({e})") from None


@dataclass
class ModelConfig:
    num_hidden_layers: int
    num_experts: int
    experts_per_token: int
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    head_dim: int
    num_attention_heads: int
    num_key_value_heads: int
    sliding_window: int
    swiglu_limit: float = 7.0
    initial_context_length: int = 4096
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_ntk_alpha: float = 1.0  # HF beta_slow
    rope_ntk_beta: float = 32.0  # HF beta_fast
    rope_truncate: bool = False
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 131072
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    # "sliding_attention" or "full_attention" per layer; default: even layers slide.
    layer_types: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.num_hidden_layers
        if not self.layer_types and isinstance(n, int) and 0 < n <= _MAX_LAYERS:
            self.layer_types = [
                "sliding_attention" if i % 2 == 0 else "full_attention"
                for i in range(self.num_hidden_layers)
            ]
        self.validate()

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        """Types and sane ranges of every field; errors name the config.json key."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise CheckpointError(f"invalid model config: {msg}")

        for name in _SIZE_FIELDS:
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0,
                 f"{_key(name)} must be a positive integer, got {_show(v)}")
            need(v <= _MAX_SIZE, f"{_key(name)} = {_show(v)} is absurdly large (at most 2**31 - 1)")
        need(self.num_hidden_layers <= _MAX_LAYERS,
             f"num_hidden_layers = {self.num_hidden_layers} is absurdly large (at most {_MAX_LAYERS})")
        need(self.experts_per_token <= self.num_experts,
             f"experts_per_token ({self.experts_per_token}) > num_experts ({self.num_experts})")
        need(self.num_attention_heads % self.num_key_value_heads == 0,
             "num_attention_heads must be a multiple of num_key_value_heads")
        need(self.head_dim % 2 == 0, "head_dim must be even (half-split RoPE)")
        need(self.num_attention_heads * self.head_dim <= _MAX_SIZE,
             f"num_attention_heads * head_dim = {self.num_attention_heads} * {self.head_dim} is absurdly large "
             "(at most 2**31 - 1)")
        need(self.hidden_size % 32 == 0, "hidden_size must be a multiple of 32 (MXFP4 blocks)")
        need(self.intermediate_size % 32 == 0,
             "intermediate_size must be a multiple of 32 (MXFP4 blocks)")
        need(isinstance(self.layer_types, list), f"layer_types must be a list, got {_show(self.layer_types)}")
        need(len(self.layer_types) == self.num_hidden_layers,
             f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        for t in self.layer_types:
            need(t in ("sliding_attention", "full_attention"), f"unknown layer type {_show(t)}")
        for name, (lo, lo_open, hi) in _FLOAT_RANGES.items():
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool), f"{_key(name)} must be a number, got {_show(v)}")
            ok = _finite(v) and (v > lo if lo_open else v >= lo) and v <= hi
            upper = "finite (in float32)" if hi == _FLOAT32_MAX else f"<= {hi:g}"
            need(ok, f"{_key(name)} = {_show(v)} is out of range: it must be {'>' if lo_open else '>='} {lo:g}"
                     f" and {upper}")
        need(self.rope_ntk_beta >= self.rope_ntk_alpha,
             f"{_key('rope_ntk_beta')} ({self.rope_ntk_beta!r}) must not be below "
             f"{_key('rope_ntk_alpha')} ({self.rope_ntk_alpha!r})")
        need(isinstance(self.rope_truncate, bool), f"{_key('rope_truncate')} must be true or false, "
                                                   f"got {_show(self.rope_truncate)}")
        for name in ("eos_token_id", "pad_token_id"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < self.vocab_size),
                 f"{name} must be null or an id below vocab_size, got {_show(v)}")

    # ---------------------------------------------------------------- derived
    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def qkv_dim(self) -> int:
        return self.q_dim + 2 * self.kv_dim

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == "sliding_attention"

    def yarn(self) -> tuple[list[float], float]:
        """(inv_freq[head_dim/2], concentration) exactly as the reference computes them in fp32."""
        import numpy as np

        d = self.head_dim
        base = self.rope_theta
        factor = self.rope_scaling_factor
        orig = self.initial_context_length
        freq = (np.float32(base) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d))).astype(np.float32)
        if factor <= 1.0:
            return (1.0 / freq).astype(np.float32).tolist(), 1.0
        conc = 0.1 * math.log(factor) + 1.0

        def corr(rot: float) -> float:
            return (d * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

        low, high = corr(self.rope_ntk_beta), corr(self.rope_ntk_alpha)
        if self.rope_truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0.0), min(high, d - 1.0)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(d // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)
        extrap = (1 - ramp).astype(np.float32)
        inv_freq = ((1.0 / (factor * freq)) * (1 - extrap) + (1.0 / freq) * extrap).astype(np.float32)
        if not (np.isfinite(inv_freq).all() and math.isfinite(conc)):
            raise CheckpointError("invalid model config: the RoPE/YaRN parameters (rope_theta, rope_scaling) "
                                  "give non-finite frequencies")
        return inv_freq.tolist(), conc

    # ---------------------------------------------------------------- (de)serialisation
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Accept either the HF `config.json` or the `original/config.json` (gpt-oss ModelConfig).

        A setting the file gives twice (e.g. `initial_context_length` and
        `rope_scaling.original_max_position_embeddings`) must agree; errors name the key."""
        if not isinstance(d, dict):
            raise CheckpointError(f"invalid model config: expected a JSON object, got {type(d).__name__}")
        mt = d.get("model_type")
        if mt is not None and mt != "gpt_oss":
            raise CheckpointError(f"invalid model config: model_type is {_show(mt)}, not 'gpt_oss'")
        # transformers 5 may write the RoPE settings (rope_theta included) as rope_parameters.
        rs_key = "rope_scaling" if d.get("rope_scaling") is not None else "rope_parameters"
        rs = d.get(rs_key)
        if rs is None:
            rs = {}
        if not isinstance(rs, dict):
            raise CheckpointError(f"invalid model config: {rs_key} must be an object, got {_show(rs)}")
        rope_type = rs.get("rope_type", rs.get("type"))
        if rs and rope_type not in (None, "yarn"):
            raise CheckpointError(f"invalid model config: {rs_key}.rope_type {_show(rope_type)} is not supported "
                                  "(gpt-oss uses 'yarn')")
        top = ("", d)
        rope = (rs_key + ".", rs)

        def pick(*where: tuple[tuple[str, dict], str], default: Any = None) -> Any:
            for (prefix, src), k in where:  # transformers gives some nulls a meaning of its own
                if k in src and src[k] is None:
                    raise CheckpointError(f"invalid model config: {prefix}{k} is null")
            found = [(prefix + k, src[k]) for (prefix, src), k in where if k in src]
            for label, v in found[1:]:
                if not _same(v, found[0][1]):
                    raise CheckpointError(f"invalid model config: {found[0][0]} = {_show(found[0][1])} and "
                                          f"{label} = {_show(v)} disagree")
            return found[0][1] if found else default

        def number(v: Any, key: str) -> Any:  # floats stay floats; ints (even huge) convert or fail clearly
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise CheckpointError(f"invalid model config: {key} must be a number, got {_show(v)}")
            try:
                return float(v)
            except OverflowError:
                raise CheckpointError(f"invalid model config: {key} = {_show(v)} is out of range") from None

        kw: dict[str, Any] = dict(
            num_hidden_layers=pick((top, "num_hidden_layers")),
            num_experts=pick((top, "num_local_experts"), (top, "num_experts")),
            experts_per_token=pick((top, "num_experts_per_tok"), (top, "experts_per_token")),
            vocab_size=pick((top, "vocab_size")),
            hidden_size=pick((top, "hidden_size")),
            intermediate_size=pick((top, "intermediate_size")),
            head_dim=pick((top, "head_dim")),
            num_attention_heads=pick((top, "num_attention_heads")),
            num_key_value_heads=pick((top, "num_key_value_heads")),
            sliding_window=pick((top, "sliding_window"), default=128),
            initial_context_length=pick((top, "initial_context_length"),
                                        (rope, "original_max_position_embeddings"), default=4096),
        )
        missing = [_key(k) for k, v in kw.items() if v is None]
        if missing:
            raise CheckpointError(f"config.json lacks required keys: {', '.join(missing)}")
        floats = dict(
            swiglu_limit=pick((top, "swiglu_limit"), default=7.0),
            rope_theta=pick((top, "rope_theta"), (rope, "rope_theta"), default=150000.0),
            rope_scaling_factor=pick((rope, "factor"), (top, "rope_scaling_factor"), default=32.0),
            rope_ntk_alpha=pick((rope, "beta_slow"), (top, "rope_ntk_alpha"), default=1.0),
            rope_ntk_beta=pick((rope, "beta_fast"), (top, "rope_ntk_beta"), default=32.0),
            rms_norm_eps=pick((top, "rms_norm_eps"), default=1e-5),
        )
        for k, v in floats.items():
            kw[k] = number(v, _key(k))
        # As transformers: a rope_scaling without "truncate" truncates; no rope_scaling (the
        # original layout, or transformers' GptOssConfig defaults) does not.
        kw["rope_truncate"] = pick((rope, "truncate"), default=True) if rs else False
        layer_types = d.get("layer_types")
        if layer_types is not None and not isinstance(layer_types, list):
            raise CheckpointError(f"invalid model config: layer_types must be a list, got {_show(layer_types)}")
        kw["layer_types"] = list(layer_types or [])
        eos = d.get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        kw["eos_token_id"], kw["pad_token_id"] = eos, d.get("pad_token_id")
        mpe = pick((top, "max_position_embeddings"))
        if mpe is None:  # what the YaRN factor stretches the original context to
            ctx, factor = kw["initial_context_length"], kw["rope_scaling_factor"]
            ok = isinstance(ctx, int) and math.isfinite(factor) and 0 < ctx * max(1.0, factor) < 2 ** 62
            mpe = int(ctx * max(1.0, factor)) if ok else ctx
        kw["max_position_embeddings"] = mpe
        return cls(**kw)

    @classmethod
    def from_file(cls, path: str) -> "ModelConfig":
        d = load_json(path, "config.json")
        if not isinstance(d, dict):
            raise CheckpointError(f"{path}: config.json must hold a JSON object")
        try:
            return cls.from_dict(d)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF `config.json` for this configuration (what transformers' GptOssConfig reads)."""
        return {
            "architectures": ["GptOssForCausalLM"],
            "model_type": "gpt_oss",
            "attention_bias": True,
            "attention_dropout": 0.0,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "experts_per_token": self.experts_per_token,
            "num_experts_per_tok": self.experts_per_token,
            "num_local_experts": self.num_experts,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initial_context_length": self.initial_context_length,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "layer_types": list(self.layer_types),
            "max_position_embeddings": self.max_position_embeddings,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "output_router_logits": False,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": {
                "beta_fast": self.rope_ntk_beta,
                "beta_slow": self.rope_ntk_alpha,
                "factor": self.rope_scaling_factor,
                "original_max_position_embeddings": self.initial_context_length,
                "rope_type": "yarn",
                "truncate": self.rope_truncate,
            },
            "rope_theta": self.rope_theta,
            "router_aux_loss_coef": 0.9,
            "sliding_window": self.sliding_window,
            "swiglu_limit": self.swiglu_limit,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.55.0",
            "use_cache": True,
            "vocab_size": self.vocab_size,
            "quantization_config": {
                "quant_method": "mxfp4",
                "modules_to_not_convert": [
                    "model.layers.*.self_attn", "model.layers.*.mlp.router",
                    "model.embed_tokens", "lm_head",
                ],
            },
        }

    def to_original_dict(self) -> dict[str, Any]:
        """The `original/config.json` (gpt-oss ModelConfig keys)."""
        return {
            "num_hidden_layers": self.num_hidden_layers,
            "num_experts": self.num_experts,
            "experts_per_token": self.experts_per_token,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "swiglu_limit": self.swiglu_limit,
            "head_dim": self.head_dim,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "sliding_window": self.sliding_window,
            "initial_context_length": self.initial_context_length,
            "rope_theta": self.rope_theta,
            "rope_scaling_factor": self.rope_scaling_factor,
            "rope_ntk_alpha": self.rope_ntk_alpha,
            "rope_ntk_beta": self.rope_ntk_beta,
        }

    def replace(self, **kw: Any) -> "ModelConfig":
        if "num_hidden_layers" in kw and "layer_types" not in kw:
            kw["layer_types"] = []
        return dataclasses.replace(self, **kw)


_REAL = dict(
    vocab_size=201088, hidden_size=2880, intermediate_size=2880, head_dim=64,
    num_attention_heads=64, num_key_value_heads=8, sliding_window=128, experts_per_token=4,
    swiglu_limit=7.0, initial_context_length=4096, rope_theta=150000.0, rope_scaling_factor=32.0,
    rope_ntk_alpha=1.0, rope_ntk_beta=32.0, rms_norm_eps=1e-5, max_position_embeddings=131072,
    eos_token_id=200002, pad_token_id=199999,
)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        num_hidden_layers=2, num_experts=4, experts_per_token=2, vocab_size=1024, hidden_size=64,
        intermediate_size=64, head_dim=64, num_attention_heads=4, num_key_value_heads=2,
        sliding_window=8, max_position_embeddings=4096, initial_context_length=4096,
        eos_token_id=None, pad_token_id=None,
    ),
    "gpt-oss-20b": dict(_REAL, num_hidden_layers=24, num_experts=32),
    "gpt-oss-120b": dict(_REAL, num_hidden_layers=36, num_experts=128),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    kw = dict(PRESETS[name])
    kw.update(overrides)
    for k in ("eos_token_id", "pad_token_id"):  # a smaller vocab drops ids it no longer has
        if k not in overrides and kw.get(k) is not None and kw[k] >= kw["vocab_size"]:
            kw[k] = None
    return ModelConfig(**kw)
