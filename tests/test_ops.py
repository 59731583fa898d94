"""CPU kernels (csrc/cpu/ops.cc) against float64 numpy references (tests/numpy_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest

from gptoss import _core
from gptoss.config import preset
import numpy_reference as ref

K = _core.kernels


def _bf16(x: np.ndarray) -> np.ndarray:
    b = np.asarray(x, np.float32).view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def _f(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


@pytest.mark.parametrize("T,H", [(1, 64), (3, 96), (7, 2880), (33, 40)])
def test_rmsnorm(T, H):
    rng = np.random.default_rng(T * H)
    x = rng.normal(0, 3, (T, H)).astype(np.float32)
    w = rng.normal(1, 0.2, H).astype(np.float32)
    np.testing.assert_allclose(K.rmsnorm(x, w, 1e-5), ref.rmsnorm(x, w), rtol=2e-6, atol=2e-6)


def test_embedding():
    rng = np.random.default_rng(0)
    E = _bf16(rng.normal(0, 1, (50, 72)))
    tok = np.array([3, 49, 0, 3, 17], dtype=np.int32)
    np.testing.assert_array_equal(K.embedding(tok, E), _f(E)[tok])
    with pytest.raises(ValueError):
        K.embedding(np.array([50], dtype=np.int32), E)


@pytest.mark.parametrize("head_dim,heads", [(64, 4), (32, 3), (8, 1)])
def test_rope_yarn(head_dim, heads):
    cfg = preset("tiny", head_dim=head_dim, num_attention_heads=heads, num_key_value_heads=1)
    inv, conc = cfg.yarn()
    inv_ref, conc_ref = ref.yarn_inv_freq(head_dim)
    np.testing.assert_allclose(inv, inv_ref, rtol=1e-6)
    assert abs(conc - conc_ref) < 1e-12 and abs(conc - 1.3465735902799727) < 1e-12
    rng = np.random.default_rng(head_dim)
    pos = np.array([0, 1, 5, 127, 128, 4095, 100000], dtype=np.int64)
    x = rng.normal(0, 1, (len(pos), heads * head_dim)).astype(np.float32)
    got = K.rope(x, pos, np.array(inv, np.float32), conc, heads)
    # Reference from the fp32 frequencies, angles in float64 after the fp32 product.
    ang = (pos.astype(np.float32)[:, None] * np.array(inv, np.float32)[None, :]).astype(np.float64)
    want = ref.apply_rope(x.reshape(len(pos), heads, head_dim).astype(np.float64),
                          np.cos(ang) * conc, np.sin(ang) * conc).reshape(len(pos), -1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got[1:], x[1:])  # it rotated something


def _attn_case(rng, L, n_kv, G, D, positions, window, sink_scale=1.0, block=4):
    Hq = n_kv * G
    q = rng.normal(0, 1, (len(positions), Hq * D)).astype(np.float32)
    k = rng.normal(0, 1, (L, n_kv, D)).astype(np.float32)
    v = rng.normal(0, 1, (L, n_kv, D)).astype(np.float32)
    sinks = (rng.normal(0, 1, Hq) * sink_scale).astype(np.float32)
    pos = np.array(positions, dtype=np.int64)
    scale = D ** -0.5
    got = K.attention(q, k, v, pos, sinks, scale, window or 0, block_size=block, shuffle_seed=int(rng.integers(1 << 30)))
    want = ref.attention(q.reshape(len(pos), Hq, D).astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                         sinks.astype(np.float64), scale, window, q_positions=pos, k_positions=np.arange(L))
    return got, want.reshape(len(pos), -1)


@pytest.mark.parametrize("simd", ["avx512", "scalar"])
@pytest.mark.parametrize("window", [None, 1, 5, 8, 17, 128])
@pytest.mark.parametrize("block,G,D", [(1, 3, 64), (3, 3, 64), (16, 3, 64), (16, 8, 64), (32, 5, 32), (48, 1, 16)])
def test_attention_window_and_paging(window, block, G, D, simd, monkeypatch):
    monkeypatch.setenv("GPTOSS_SIMD", simd)  # the vectorised path needs block and head_dim % 16 == 0
    rng = np.random.default_rng(hash((window, block, G, D)) % 2**32)
    L = 70
    # Positions at the window boundary, the first position (only itself + sink), mid-block, the end.
    positions = [0, 1, 4, 5, 7, 8, 9, 16, 17, 20, 31, 32, 33, 47, 69]
    got, want = _attn_case(rng, L, n_kv=2, G=G, D=D, positions=positions, window=window, block=block)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_attention_long_context():
    rng = np.random.default_rng(9)
    got, want = _attn_case(rng, 3000, 2, 8, 64, [2999, 1500, 17], None, block=16)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_attention_sink_dominates_and_vanishes():
    rng = np.random.default_rng(1)
    got, want = _attn_case(rng, 12, 1, 4, 16, [0, 5, 11], None, sink_scale=0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
    # A huge sink takes (almost) all the probability mass: the output goes to ~0.
    got, want = _attn_case(rng, 12, 1, 4, 16, [0, 5, 11], 4, sink_scale=1e3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # A very negative sink: plain softmax attention.
    got, want = _attn_case(rng, 12, 1, 4, 16, [3], None, sink_scale=-1e3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_router_topk_ties_and_order():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (20, 32)).astype(np.float32)
    logits[0, [3, 9, 17, 30]] = 5.0  # exact ties: lower id first
    logits[1, :] = 1.0               # everything tied
    logits[2, [4, 5]] = 9.0
    idx, w = K.router_topk_softmax(logits, 4)
    ridx, rw = ref.router_topk_softmax(logits.astype(np.float64), 4)
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_allclose(w, rw, rtol=1e-6, atol=1e-7)
    assert list(idx[0]) == [3, 9, 17, 30] and list(idx[1]) == [0, 1, 2, 3]
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)


def test_swiglu_clamps():
    rng = np.random.default_rng(3)
    h = rng.normal(0, 5, (9, 2 * 37)).astype(np.float32)
    h[0, 0], h[0, 1] = 50.0, -50.0  # both clamps active
    h[1, 0], h[1, 1] = -50.0, 50.0  # gate unclamped below, lin clamped above
    np.testing.assert_allclose(K.swiglu(h, 1.702, 7.0), ref.swiglu(h.astype(np.float64)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("T,N,D", [(1, 37, 64), (2, 5, 2880), (3, 130, 96), (4, 8, 32), (7, 9, 320)])
def test_int8_decode_matmul(T, N, D):
    rng = np.random.default_rng(T * N + D)
    w = _bf16(rng.normal(0, 0.05, (N, D)))
    q, s = K.quantize_q8(w)
    wf = _f(w).astype(np.float64)
    deq = q.astype(np.float64) * np.repeat(s, 32, axis=1)
    # Symmetric per-32 quantization: every weight within half a step, the block max exact.
    assert np.all(np.abs(deq - wf) <= np.repeat(s, 32, axis=1) * (0.5 + 1e-4) + 1e-12)
    np.testing.assert_allclose(s, np.abs(wf).reshape(N, D // 32, 32).max(-1) / 127, rtol=1e-6)
    x = rng.normal(0, 1, (T, D)).astype(np.float32)
    want = x.astype(np.float64) @ deq.T
    np.testing.assert_allclose(K.matmul_q8(x, q, s), want, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(K.matmul_q8_ref(x, q, s), want, rtol=1e-6, atol=1e-6)
