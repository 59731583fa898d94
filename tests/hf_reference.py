"""Independent reference: Hugging Face transformers' GptOssForCausalLM on the CPU in float32.

    hf_logits(checkpoint_dir, tokens) -> np.ndarray float32 [T, vocab]
    hf_greedy(checkpoint_dir, tokens, n) -> list[int]
    hf_model(checkpoint_dir) -> the loaded (cached) GptOssForCausalLM

Loading route: transformers loads the HF-layout directory itself (config.json with the mxfp4
quantization_config, model.safetensors.index.json, shards) with
``quantization_config=Mxfp4Config(dequantize=True)``, ``dtype=torch.float32``,
``attn_implementation="eager"`` and ``experts_implementation="eager"``. On a CPU without the
``kernels``/``triton`` packages transformers dequantizes the MXFP4 experts itself
(integrations/mxfp4.py ``convert_moe_packed_tensors``) into float32 parameters, exactly.

An ``original/`` layout directory is first converted here (names mapped, fused qkv split
into q/k/v rows, blocks and scales copied byte for byte, HF config.json built from the
gpt-oss ModelConfig keys) into a temporary HF-layout directory, using only the
``safetensors`` package: no engine code is involved.

Every forward is a full recompute over the whole sequence (no KV cache). Models are cached
per directory for the life of the process.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np

_MODELS: dict = {}
_TMPDIRS: list[str] = []


def _cleanup() -> None:
    for d in _TMPDIRS:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


def _is_hf_dir(d: str) -> bool:
    if os.path.isfile(os.path.join(d, "model.safetensors.index.json")):
        return True
    with open(os.path.join(d, "config.json"), encoding="utf-8") as f:
        cj = json.load(f)
    return "model_type" in cj or "num_local_experts" in cj


def original_config_to_hf(oc: dict) -> dict:
    """HF config.json for a gpt-oss original ModelConfig dict (what convert_gpt_oss_weights_to_hf does)."""
    n = oc["num_hidden_layers"]
    return {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "attention_bias": True,
        "attention_dropout": 0.0,
        "num_hidden_layers": n,
        "num_local_experts": oc["num_experts"],
        "num_experts_per_tok": oc["experts_per_token"],
        "experts_per_token": oc["experts_per_token"],
        "vocab_size": oc["vocab_size"],
        "hidden_size": oc["hidden_size"],
        "intermediate_size": oc["intermediate_size"],
        "swiglu_limit": oc["swiglu_limit"],
        "head_dim": oc["head_dim"],
        "num_attention_heads": oc["num_attention_heads"],
        "num_key_value_heads": oc["num_key_value_heads"],
        "sliding_window": oc["sliding_window"],
        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)],
        "initial_context_length": oc["initial_context_length"],
        "max_position_embeddings": 131072,
        "rope_theta": oc["rope_theta"],
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": float(oc["rope_scaling_factor"]),
            "beta_fast": float(oc["rope_ntk_beta"]),
            "beta_slow": float(oc["rope_ntk_alpha"]),
            "original_max_position_embeddings": oc["initial_context_length"],
            "truncate": False,
        },
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "quantization_config": {
            "quant_method": "mxfp4",
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                       "model.embed_tokens", "lm_head"],
        },
    }


_ORIG_TO_HF_SUFFIX = {
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


def convert_original_to_hf(src: str, dst: str) -> None:
    """Write an HF-layout copy of the original-layout checkpoint in `src` to `dst`."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with open(os.path.join(src, "config.json"), encoding="utf-8") as f:
        oc = json.load(f)
    q_len = oc["head_dim"] * oc["num_attention_heads"]
    kv_len = oc["head_dim"] * oc["num_key_value_heads"]
    os.makedirs(dst, exist_ok=True)
    weight_map = {}
    total = 0
    files = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
    for i, fn in enumerate(files):
        out = {}
        with safe_open(os.path.join(src, fn), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                if name == "embedding.weight":
                    out["model.embed_tokens.weight"] = t
                elif name == "norm.scale":
                    out["model.norm.weight"] = t
                elif name == "unembedding.weight":
                    out["lm_head.weight"] = t
                else:
                    _, layer, suffix = name.split(".", 2)
                    pre = f"model.layers.{layer}."
                    if suffix in ("attn.qkv.weight", "attn.qkv.bias"):
                        kind = suffix.rsplit(".", 1)[1]
                        assert t.shape[0] == q_len + 2 * kv_len, (name, t.shape)
                        out[pre + f"self_attn.q_proj.{kind}"] = t[:q_len].contiguous()
                        out[pre + f"self_attn.k_proj.{kind}"] = t[q_len:q_len + kv_len].contiguous()
                        out[pre + f"self_attn.v_proj.{kind}"] = t[q_len + kv_len:].contiguous()
                    else:
                        out[pre + _ORIG_TO_HF_SUFFIX[suffix]] = t
        shard = f"model-{i:05d}-of-{len(files) - 1:05d}.safetensors"
        save_file(out, os.path.join(dst, shard), metadata={"format": "pt"})
        for k, t in out.items():
            weight_map[k] = shard
            total += t.numel() * t.element_size()
    with open(os.path.join(dst, "config.json"), "w", encoding="utf-8") as f:
        json.dump(original_config_to_hf(oc), f, indent=2)
    with open(os.path.join(dst, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def _load(hf_dir: str, dtype: str = "float32"):
    import torch
    from transformers import GptOssForCausalLM, Mxfp4Config
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import transformers
    from transformers import GptOssConfig

    config = GptOssConfig.from_pretrained(hf_dir, local_files_only=True)
    # nn.Embedding refuses a padding_idx outside the table (real ids with a shrunken vocab);
    # padding_idx only matters for training, so drop it.
    if config.pad_token_id is not None and not 0 <= config.pad_token_id < config.vocab_size:
        config.pad_token_id = None
    dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model, info = GptOssForCausalLM.from_pretrained(
        hf_dir,
        config=config,
        **{dtype_kw: getattr(torch, dtype)},
        attn_implementation="eager",
        experts_implementation="eager",
        quantization_config=Mxfp4Config(dequantize=True),
        output_loading_info=True,
        local_files_only=True,
    )
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        raise RuntimeError(f"transformers did not load {hf_dir} cleanly: {bad}")
    model.eval()
    for p in model.parameters():
        if p.dtype != getattr(torch, dtype):
            raise RuntimeError(f"parameter in {p.dtype}, expected {dtype}")
    if model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("transformers tied lm_head to embed_tokens")
    return model


def hf_model(checkpoint_dir: str, dtype: str = "float32"):
    """The transformers model for `checkpoint_dir` (HF or original layout) with its parameters and
    computation in `dtype` ("float32" or "bfloat16"), cached."""
    path = os.path.realpath(checkpoint_dir)
    key = path if dtype == "float32" else f"{path}@{dtype}"
    if key not in _MODELS:
        d = path
        if not _is_hf_dir(d):
            d = tempfile.mkdtemp(prefix="gptoss-hfref-")
            _TMPDIRS.append(d)
            convert_original_to_hf(path, d)
        _MODELS[key] = _load(d, dtype)
    return _MODELS[key]


def clear_cache(checkpoint_dir: "str | None" = None) -> None:
    """Drop the cached model of `checkpoint_dir` (all cached models when None)."""
    if checkpoint_dir is None:
        _MODELS.clear()
    else:
        path = os.path.realpath(checkpoint_dir)
        for key in [k for k in _MODELS if k == path or k.startswith(path + "@")]:
            del _MODELS[key]


def hf_logits(checkpoint_dir: str, tokens: Sequence[int], dtype: str = "float32") -> np.ndarray:
    """float32 logits [T, vocab] for `tokens` at positions 0..T-1 (computed in `dtype`)."""
    import torch

    model = hf_model(checkpoint_dir, dtype)
    ids = torch.tensor([list(tokens)], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False)
    return out.logits[0].to(torch.float32).numpy().copy()


def hf_greedy(checkpoint_dir: str, tokens: Sequence[int], n: int) -> list[int]:
    """n greedy tokens (argmax, ties to the lowest id), each step a full forward of the sequence."""
    seq = list(tokens)
    out = []
    for _ in range(n):
        last = hf_logits(checkpoint_dir, seq)[-1]
        nxt = int(np.argmax(last))
        out.append(nxt)
        seq.append(nxt)
    return out
