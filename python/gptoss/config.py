"""Model configuration: read from a checkpoint's `config.json` (HF or `original/` layout) or a preset.

Every dimension the engine uses comes from here; nothing about the real models is hard-coded
in the runtime. Field names follow the HF `config.json` where one exists.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import CheckpointError

__all__ = ["ModelConfig", "PRESETS", "preset", "find_checkpoint", "CheckpointError"]


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
        if not self.layer_types:
            self.layer_types = [
                "sliding_attention" if i % 2 == 0 else "full_attention"
                for i in range(self.num_hidden_layers)
            ]
        self.validate()

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise CheckpointError(f"invalid model config: {msg}")

        for name in ("num_hidden_layers", "num_experts", "experts_per_token", "vocab_size",
                     "hidden_size", "intermediate_size", "head_dim", "num_attention_heads",
                     "num_key_value_heads", "sliding_window", "max_position_embeddings"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0,
                 f"{name} must be a positive integer, got {v!r}")
        need(self.experts_per_token <= self.num_experts,
             f"experts_per_token ({self.experts_per_token}) > num_experts ({self.num_experts})")
        need(self.num_attention_heads % self.num_key_value_heads == 0,
             "num_attention_heads must be a multiple of num_key_value_heads")
        need(self.head_dim % 2 == 0, "head_dim must be even (half-split RoPE)")
        need(self.hidden_size % 32 == 0, "hidden_size must be a multiple of 32 (MXFP4 blocks)")
        need(self.intermediate_size % 32 == 0,
             "intermediate_size must be a multiple of 32 (MXFP4 blocks)")
        need(len(self.layer_types) == self.num_hidden_layers,
             f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        for t in self.layer_types:
            need(t in ("sliding_attention", "full_attention"), f"unknown layer type {t!r}")
        need(self.rope_theta > 0 and self.rope_scaling_factor >= 1.0, "bad RoPE parameters")
        need(self.rms_norm_eps > 0, "rms_norm_eps must be positive")
        for name in ("eos_token_id", "pad_token_id"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, int) and 0 <= v < self.vocab_size),
                 f"{name} must be null or an id below vocab_size, got {v!r}")

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
        inv_freq = (1.0 / (factor * freq)) * (1 - extrap) + (1.0 / freq) * extrap
        return inv_freq.astype(np.float32).tolist(), conc

    # ---------------------------------------------------------------- (de)serialisation
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Accept either the HF `config.json` or the `original/config.json` (gpt-oss ModelConfig)."""
        def get(*keys: str, default: Any = None) -> Any:
            for k in keys:
                if k in d and d[k] is not None:
                    return d[k]
            return default

        try:
            # transformers 5 may write the RoPE settings (rope_theta included) as rope_parameters.
            rs = d.get("rope_scaling") or d.get("rope_parameters") or {}
            kw: dict[str, Any] = dict(
                num_hidden_layers=get("num_hidden_layers"),
                num_experts=get("num_local_experts", "num_experts"),
                experts_per_token=get("num_experts_per_tok", "experts_per_token"),
                vocab_size=get("vocab_size"),
                hidden_size=get("hidden_size"),
                intermediate_size=get("intermediate_size"),
                head_dim=get("head_dim"),
                num_attention_heads=get("num_attention_heads"),
                num_key_value_heads=get("num_key_value_heads"),
                sliding_window=get("sliding_window", default=128),
                swiglu_limit=float(get("swiglu_limit", default=7.0)),
                initial_context_length=int(get("initial_context_length", default=rs.get("original_max_position_embeddings", 4096))),
                rope_theta=float(get("rope_theta", default=rs.get("rope_theta", 150000.0))),
                rope_scaling_factor=float(rs.get("factor", get("rope_scaling_factor", default=32.0))),
                rope_ntk_alpha=float(rs.get("beta_slow", get("rope_ntk_alpha", default=1.0))),
                rope_ntk_beta=float(rs.get("beta_fast", get("rope_ntk_beta", default=32.0))),
                rope_truncate=bool(rs.get("truncate", False)) if rs else False,
                rms_norm_eps=float(get("rms_norm_eps", default=1e-5)),
                eos_token_id=d.get("eos_token_id"),
                pad_token_id=d.get("pad_token_id"),
                layer_types=list(d.get("layer_types") or []),
            )
            if isinstance(kw["eos_token_id"], list):
                kw["eos_token_id"] = kw["eos_token_id"][0] if kw["eos_token_id"] else None
            mpe = get("max_position_embeddings")
            if mpe is None:
                mpe = int(kw["initial_context_length"] * max(1.0, kw["rope_scaling_factor"]))
            kw["max_position_embeddings"] = int(mpe)
        except (TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"invalid model config: {e}") from None
        missing = [k for k, v in kw.items() if v is None and k not in ("eos_token_id", "pad_token_id")]
        if missing:
            raise CheckpointError(f"config.json lacks required keys: {', '.join(missing)}")
        return cls(**kw)

    @classmethod
    def from_file(cls, path: str) -> "ModelConfig":
        try:
            with open(path, "r", encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: config.json not found") from None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from None
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


def find_checkpoint(path: str) -> tuple[str, str, list[str]]:
    """Locate the checkpoint in `path`: returns (layout, directory, safetensors files).

    layout is "hf" (config.json + model.safetensors.index.json or model*.safetensors at the root)
    or "original" (the `original/` folder, or a folder holding the gpt-oss ModelConfig).
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory")

    def st_files(d: str) -> list[str]:
        return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".safetensors"))

    cfg_path = os.path.join(path, "config.json")
    index_path = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path, "r", encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{cfg_path}: cannot read config.json ({e})") from None
        is_hf = isinstance(d, dict) and ("model_type" in d or "num_local_experts" in d)
        if is_hf:
            if os.path.isfile(index_path):
                try:
                    with open(index_path, "r", encoding="utf-8") as f:
                        idx = json.load(f)
                    files = sorted({os.path.join(path, v) for v in idx["weight_map"].values()})
                except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                    raise CheckpointError(f"{index_path}: malformed index ({e!r})") from None
                for f in files:
                    if not os.path.isfile(f):
                        raise CheckpointError(f"{index_path}: shard {os.path.basename(f)} is missing")
                return "hf", path, files
            files = st_files(path)
            if files:
                return "hf", path, files
            sub = os.path.join(path, "original")
            if os.path.isdir(sub):
                return find_checkpoint(sub)
            raise CheckpointError(f"{path}: no *.safetensors files next to config.json")
        files = st_files(path)
        if not files:
            raise CheckpointError(f"{path}: no *.safetensors files next to config.json")
        return "original", path, files
    sub = os.path.join(path, "original")
    if os.path.isdir(sub):
        return find_checkpoint(sub)
    raise CheckpointError(f"{path}: no config.json (expected a gpt-oss checkpoint directory)")
