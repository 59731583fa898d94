"""Float64 numpy forward pass of gpt-oss, written from the fact sheet (/work/shared/spec/gpt-oss.md §2, §4).

This is the second, independent oracle next to transformers (tests/hf_reference.py). It depends
on numpy only: it has its own safetensors reader, its own config parsing and its own MXFP4
dequantization, and shares no code with the engine or with gptoss.synthetic.

Building blocks (all float64, usable by kernel-level tests):
    bf16_to_f64, mxfp4_dequant, rmsnorm, yarn_inv_freq, rope_cos_sin, apply_rope,
    attention, router_topk_softmax, swiglu, moe, layer_forward, forward
Checkpoint access:
    read_safetensors, RefConfig, RefModel.load(dir), RefModel.logits(tokens), RefModel.greedy(...)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

FP4_VALUES = np.array([+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float64)
SWIGLU_ALPHA = 1.702


# ----------------------------------------------------------------------------- file reading
def read_safetensors(path: str) -> dict[str, tuple[str, tuple[int, ...], np.ndarray]]:
    """{name: (dtype, shape, raw array)}; BF16 as uint16 bit patterns, U8 as uint8, F32 as float32."""
    kinds = {"BF16": np.uint16, "U8": np.uint8, "F32": np.float32, "F16": np.float16,
             "I8": np.int8, "F64": np.float64}
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n).decode("utf-8"))
        base = 8 + n
    data = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = kinds[info["dtype"]]
        b, e = info["data_offsets"]
        shape = tuple(info["shape"])
        arr = np.frombuffer(data[base + b: base + e].tobytes(), dtype=dt)
        if arr.size != math.prod(shape):
            raise ValueError(f"{path}: {name}: {arr.size} elements for shape {shape}")
        out[name] = (info["dtype"], shape, arr.reshape(shape))
    return out


def bf16_to_f64(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) -> float64 (exact)."""
    u32 = np.asarray(bits).astype(np.uint32) << np.uint32(16)
    return u32.view(np.float32).astype(np.float64)


def mxfp4_dequant(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """[..., nb, 16] uint8 blocks + [..., nb] uint8 E8M0 scales -> [..., nb*32] float64.

    Low nibble of byte j is element 2j, high nibble element 2j+1; value = table[n] * 2^(scale-127).
    """
    blocks = np.asarray(blocks, dtype=np.uint8)
    scales = np.asarray(scales, dtype=np.uint8)
    assert blocks.shape[:-1] == scales.shape and blocks.shape[-1] == 16
    lo = FP4_VALUES[blocks & 0x0F]
    hi = FP4_VALUES[blocks >> 4]
    vals = np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-1], 32)
    vals = np.ldexp(vals, scales.astype(np.int64)[..., None] - 127)
    return vals.reshape(*blocks.shape[:-2], blocks.shape[-2] * 32)


# ----------------------------------------------------------------------------- config
@dataclass
class RefConfig:
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
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_ntk_alpha: float = 1.0
    rope_ntk_beta: float = 32.0
    initial_context_length: int = 4096
    rms_norm_eps: float = 1e-5
    sm_scale: Optional[float] = None  # default 1/sqrt(head_dim) (0.125 for the real models)
    layer_sliding: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.layer_sliding:
            self.layer_sliding = [i % 2 == 0 for i in range(self.num_hidden_layers)]

    @classmethod
    def from_json(cls, d: dict) -> "RefConfig":
        if "num_local_experts" in d or "model_type" in d:  # HF config.json
            rs = d.get("rope_scaling") or d.get("rope_parameters") or {}
            lt = d.get("layer_types")
            return cls(
                num_hidden_layers=d["num_hidden_layers"], num_experts=d["num_local_experts"],
                experts_per_token=d["num_experts_per_tok"], vocab_size=d["vocab_size"],
                hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
                head_dim=d["head_dim"], num_attention_heads=d["num_attention_heads"],
                num_key_value_heads=d["num_key_value_heads"], sliding_window=d["sliding_window"],
                swiglu_limit=d.get("swiglu_limit", 7.0),
                rope_theta=d.get("rope_theta", rs.get("rope_theta", 150000.0)),
                rope_scaling_factor=rs.get("factor", 32.0), rope_ntk_alpha=rs.get("beta_slow", 1.0),
                rope_ntk_beta=rs.get("beta_fast", 32.0),
                initial_context_length=rs.get("original_max_position_embeddings", 4096),
                rms_norm_eps=d.get("rms_norm_eps", 1e-5),
                layer_sliding=[t == "sliding_attention" for t in lt] if lt else [],
            )
        return cls(  # original/config.json
            num_hidden_layers=d["num_hidden_layers"], num_experts=d["num_experts"],
            experts_per_token=d["experts_per_token"], vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
            head_dim=d["head_dim"], num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d["num_key_value_heads"], sliding_window=d["sliding_window"],
            swiglu_limit=d.get("swiglu_limit", 7.0), rope_theta=d.get("rope_theta", 150000.0),
            rope_scaling_factor=d.get("rope_scaling_factor", 32.0),
            rope_ntk_alpha=d.get("rope_ntk_alpha", 1.0), rope_ntk_beta=d.get("rope_ntk_beta", 32.0),
            initial_context_length=d.get("initial_context_length", 4096),
        )


# ----------------------------------------------------------------------------- kernels
def rmsnorm(x: np.ndarray, scale: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def yarn_inv_freq(head_dim: int, theta: float = 150000.0, factor: float = 32.0,
                  ntk_alpha: float = 1.0, ntk_beta: float = 32.0,
                  initial_context_length: int = 4096) -> tuple[np.ndarray, float]:
    """(inv_freq [head_dim/2], concentration) per spec §1 (YaRN, not truncated), in float64."""
    d = head_dim
    freq = theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    if factor <= 1.0:
        return 1.0 / freq, 1.0
    conc = 0.1 * math.log(factor) + 1.0
    low = d / 2 * math.log(initial_context_length / (ntk_beta * 2 * math.pi)) / math.log(theta)
    high = d / 2 * math.log(initial_context_length / (ntk_alpha * 2 * math.pi)) / math.log(theta)
    assert 0 < low < high < d / 2 - 1
    interp = 1.0 / (factor * freq)
    extrap = 1.0 / freq
    ramp = (np.arange(d // 2, dtype=np.float64) - low) / (high - low)
    mask = 1 - np.clip(ramp, 0, 1)
    return interp * (1 - mask) + extrap * mask, conc


def rope_cos_sin(positions: Sequence[int], inv_freq: np.ndarray, conc: float) -> tuple[np.ndarray, np.ndarray]:
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(ang) * conc, np.sin(ang) * conc


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Half-split (NeoX) rotation. x: [T, heads, head_dim]; cos/sin: [T, head_dim/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, sinks: np.ndarray,
              sm_scale: float, window: Optional[int] = None,
              q_positions: Optional[Sequence[int]] = None,
              k_positions: Optional[Sequence[int]] = None) -> np.ndarray:
    """Causal GQA attention with sinks and an optional sliding window.

    q [Tq, Hq, D], k/v [Tk, Hkv, D], sinks [Hq]. Query head h uses KV head h // (Hq/Hkv).
    Query at position i sees keys j with j <= i and, with a window W, i - W < j.
    The sink logit (not scaled) joins the softmax and is then dropped. Returns [Tq, Hq, D].
    """
    Tq, Hq, D = q.shape
    Tk, Hkv, _ = k.shape
    g = Hq // Hkv
    qp = np.arange(Tk - Tq, Tk) if q_positions is None else np.asarray(q_positions)
    kp = np.arange(Tk) if k_positions is None else np.asarray(k_positions)
    allowed = kp[None, :] <= qp[:, None]
    if window is not None:
        allowed &= kp[None, :] > qp[:, None] - window
    kh = np.repeat(k, g, axis=1)  # [Tk, Hq, D]
    vh = np.repeat(v, g, axis=1)
    s = np.einsum("qhd,khd->hqk", q, kh) * sm_scale
    s = np.where(allowed[None], s, -np.inf)
    sink = np.broadcast_to(np.asarray(sinks, dtype=np.float64)[:, None, None], (Hq, Tq, 1))
    full = np.concatenate([s, sink], axis=-1)
    m = full.max(axis=-1, keepdims=True)
    e = np.exp(full - m)
    p = e / e.sum(axis=-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", p[..., :-1], vh)


def router_topk_softmax(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k first (ties to the lower expert id), then softmax over the k chosen logits.

    logits [T, E] -> (indices [T, k] sorted by descending logit, weights [T, k]).
    """
    idx = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    top = np.take_along_axis(logits, idx, axis=-1)
    e = np.exp(top - top.max(axis=-1, keepdims=True))
    return idx, e / e.sum(axis=-1, keepdims=True)


def swiglu(h: np.ndarray, limit: float = 7.0, alpha: float = SWIGLU_ALPHA) -> np.ndarray:
    """Interleaved SwiGLU: gate = h[..., 0::2], lin = h[..., 1::2]."""
    gate, lin = h[..., 0::2], h[..., 1::2]
    gate = np.minimum(gate, limit)
    lin = np.clip(lin, -limit, limit)
    return gate * (1.0 / (1.0 + np.exp(-alpha * gate))) * (lin + 1.0)


def moe(t: np.ndarray, gate_w: np.ndarray, gate_b: np.ndarray, w1: np.ndarray, b1: np.ndarray,
        w2: np.ndarray, b2: np.ndarray, k: int, limit: float = 7.0) -> np.ndarray:
    """t [T, H] (already normed); w1 [E, 2I, H], w2 [E, H, I] (nn.Linear orientation).

    out[t] = sum over the chosen experts e of w_e * (W2[e] swiglu(W1[e] t + b1[e]) + b2[e]).
    Expert weights may be stored in float32 (MXFP4 values are exact there); math is float64.
    """
    idx, wts = router_topk_softmax(t @ gate_w.T + gate_b, k)
    out = np.zeros_like(t, dtype=np.float64)
    for e in np.unique(idx):
        rows, slots = np.nonzero(idx == e)  # a token picks an expert at most once
        h = t[rows] @ np.asarray(w1[e], dtype=np.float64).T + b1[e]
        y = swiglu(h, limit) @ np.asarray(w2[e], dtype=np.float64).T + b2[e]
        out[rows] += wts[rows, slots][:, None] * y
    return out


# ----------------------------------------------------------------------------- model
@dataclass
class RefLayer:
    attn_norm: np.ndarray
    qkv_w: np.ndarray
    qkv_b: np.ndarray
    sinks: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    mlp_norm: np.ndarray
    gate_w: np.ndarray
    gate_b: np.ndarray
    mlp1_w: np.ndarray  # [E, 2I, H] (float32: dequantized MXFP4 is exact in float32)
    mlp1_b: np.ndarray
    mlp2_w: np.ndarray  # [E, H, I] (float32)
    mlp2_b: np.ndarray


def layer_forward(cfg: RefConfig, L: RefLayer, x: np.ndarray, layer_idx: int,
                  positions: np.ndarray, inv_freq: np.ndarray, conc: float) -> np.ndarray:
    T = x.shape[0]
    Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    t = rmsnorm(x, L.attn_norm, cfg.rms_norm_eps)
    qkv = t @ L.qkv_w.T + L.qkv_b
    q = qkv[:, : Hq * D].reshape(T, Hq, D)
    k = qkv[:, Hq * D: (Hq + Hkv) * D].reshape(T, Hkv, D)
    v = qkv[:, (Hq + Hkv) * D:].reshape(T, Hkv, D)
    cos, sin = rope_cos_sin(positions, inv_freq, conc)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    sm = cfg.sm_scale if cfg.sm_scale is not None else 1.0 / math.sqrt(D)
    window = cfg.sliding_window if cfg.layer_sliding[layer_idx] else None
    o = attention(q, k, v, L.sinks, sm, window, positions, positions).reshape(T, Hq * D)
    x = x + o @ L.out_w.T + L.out_b
    t = rmsnorm(x, L.mlp_norm, cfg.rms_norm_eps)
    return x + moe(t, L.gate_w, L.gate_b, L.mlp1_w, L.mlp1_b, L.mlp2_w, L.mlp2_b,
                   cfg.experts_per_token, cfg.swiglu_limit)


class RefModel:
    def __init__(self, cfg: RefConfig, embedding: np.ndarray, layers: list[RefLayer],
                 norm: np.ndarray, unembedding: np.ndarray) -> None:
        self.cfg, self.embedding, self.layers = cfg, embedding, layers
        self.norm, self.unembedding = norm, unembedding
        self.inv_freq, self.conc = yarn_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_factor,
                                                 cfg.rope_ntk_alpha, cfg.rope_ntk_beta,
                                                 cfg.initial_context_length)

    @classmethod
    def load(cls, checkpoint_dir: str, **cfg_overrides) -> "RefModel":
        """Load an HF-layout or original-layout checkpoint directory (all shards)."""
        with open(os.path.join(checkpoint_dir, "config.json"), encoding="utf-8") as f:
            cj = json.load(f)
        cfg = RefConfig.from_json(cj)
        for k, v in cfg_overrides.items():
            setattr(cfg, k, v)
        raw: dict = {}
        for fn in sorted(os.listdir(checkpoint_dir)):
            if fn.endswith(".safetensors"):
                raw.update(read_safetensors(os.path.join(checkpoint_dir, fn)))
        hf = "model.embed_tokens.weight" in raw

        def bf(name: str) -> np.ndarray:
            dt, _, a = raw[name]
            if dt != "BF16":
                raise ValueError(f"{name}: expected BF16, got {dt}")
            return bf16_to_f64(a)

        def fp4(blocks: str, scales: str) -> np.ndarray:
            b, sc = u8(blocks), u8(scales)  # one expert at a time keeps the float64 temporaries small
            return np.stack([mxfp4_dequant(b[e], sc[e]).astype(np.float32) for e in range(b.shape[0])])

        def u8(name: str) -> np.ndarray:
            dt, _, a = raw[name]
            if dt != "U8":
                raise ValueError(f"{name}: expected U8, got {dt}")
            return a

        layers = []
        for n in range(cfg.num_hidden_layers):
            if hf:
                p = f"model.layers.{n}."
                qkv_w = np.concatenate([bf(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
                qkv_b = np.concatenate([bf(p + f"self_attn.{x}_proj.bias") for x in "qkv"])
                L = RefLayer(
                    bf(p + "input_layernorm.weight"), qkv_w, qkv_b, bf(p + "self_attn.sinks"),
                    bf(p + "self_attn.o_proj.weight"), bf(p + "self_attn.o_proj.bias"),
                    bf(p + "post_attention_layernorm.weight"),
                    bf(p + "mlp.router.weight"), bf(p + "mlp.router.bias"),
                    fp4(p + "mlp.experts.gate_up_proj_blocks", p + "mlp.experts.gate_up_proj_scales"),
                    bf(p + "mlp.experts.gate_up_proj_bias"),
                    fp4(p + "mlp.experts.down_proj_blocks", p + "mlp.experts.down_proj_scales"),
                    bf(p + "mlp.experts.down_proj_bias"),
                )
            else:
                p = f"block.{n}."
                L = RefLayer(
                    bf(p + "attn.norm.scale"), bf(p + "attn.qkv.weight"), bf(p + "attn.qkv.bias"),
                    bf(p + "attn.sinks"), bf(p + "attn.out.weight"), bf(p + "attn.out.bias"),
                    bf(p + "mlp.norm.scale"), bf(p + "mlp.gate.weight"), bf(p + "mlp.gate.bias"),
                    fp4(p + "mlp.mlp1_weight.blocks", p + "mlp.mlp1_weight.scales"),
                    bf(p + "mlp.mlp1_bias"),
                    fp4(p + "mlp.mlp2_weight.blocks", p + "mlp.mlp2_weight.scales"),
                    bf(p + "mlp.mlp2_bias"),
                )
            layers.append(L)
        if hf:
            emb, norm, unemb = (bf("model.embed_tokens.weight"), bf("model.norm.weight"), bf("lm_head.weight"))
        else:
            emb, norm, unemb = bf("embedding.weight"), bf("norm.scale"), bf("unembedding.weight")
        return cls(cfg, emb, layers, norm, unemb)

    def hidden(self, tokens: Sequence[int]) -> np.ndarray:
        x = self.embedding[np.asarray(tokens, dtype=np.int64)]
        pos = np.arange(len(tokens))
        for i, L in enumerate(self.layers):
            x = layer_forward(self.cfg, L, x, i, pos, self.inv_freq, self.conc)
        return rmsnorm(x, self.norm, self.cfg.rms_norm_eps)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """float64 [T, vocab]."""
        return self.hidden(tokens) @ self.unembedding.T

    def greedy(self, tokens: Sequence[int], n: int) -> list[int]:
        seq = list(tokens)
        out = []
        for _ in range(n):
            nxt = int(np.argmax(self.logits(seq)[-1]))
            out.append(nxt)
            seq.append(nxt)
        return out


def forward(checkpoint_dir: str, tokens: Sequence[int]) -> np.ndarray:
    """float64 logits [T, vocab] of the checkpoint in `checkpoint_dir` (loads it each call)."""
    return RefModel.load(checkpoint_dir).logits(tokens)
