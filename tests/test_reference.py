"""The two independent references agree: transformers (fp32) vs the float64 numpy forward.

Also checks that transformers really applies the sliding window the way the spec says
(query i sees keys i-W < j <= i on even layers), that sinks are used, and the numpy kernels
on hand-made inputs.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")
if _PY not in sys.path:
    sys.path.insert(0, _PY)

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from gptoss import synthetic as S  # noqa: E402
from gptoss.config import preset  # noqa: E402

import hf_reference as H  # noqa: E402
import numpy_reference as N  # noqa: E402

# name -> (config overrides on the tiny preset, seed, forced HF shard count)
CHECKPOINTS = {
    # tiny preset with 4 layers: MHA groups of 2, window 8
    "tiny4": (dict(num_hidden_layers=4), 1, None),
    # GQA group 4, 8 experts top-4, small window, head_dim 32, 3 HF shards
    "gqa": (dict(num_hidden_layers=4, hidden_size=96, intermediate_size=64, head_dim=32,
                 num_attention_heads=8, num_key_value_heads=2, num_experts=8, experts_per_token=4,
                 vocab_size=512, sliding_window=5), 2, 3),
    # multi-query attention (1 KV head), top-1 routing, window 3
    "mqa": (dict(num_hidden_layers=3, hidden_size=64, intermediate_size=96, head_dim=16,
                 num_attention_heads=4, num_key_value_heads=1, num_experts=6, experts_per_token=1,
                 vocab_size=300, sliding_window=3), 3, None),
}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    out = {}
    for name, (over, seed, shards) in CHECKPOINTS.items():
        d = str(root / name)
        cfg = preset("tiny", **over)
        S.write_checkpoint(cfg, d, seed=seed, layout="both", hf_shards=shards)
        out[name] = (d, cfg)
    return out


def _tokens(cfg, n, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, size=n).tolist()


def _rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(1.0, np.max(np.abs(b))))


@pytest.mark.parametrize("name", list(CHECKPOINTS))
@pytest.mark.parametrize("layout", ["hf", "original"])
def test_numpy_matches_transformers(ckpts, name, layout):
    d, cfg = ckpts[name]
    if layout == "original":
        d = os.path.join(d, "original")
    toks = _tokens(cfg, 3 * cfg.sliding_window + 7, seed=len(name))
    a = H.hf_logits(d, toks)
    b = N.RefModel.load(d).logits(toks)
    assert a.dtype == np.float32 and a.shape == (len(toks), cfg.vocab_size)
    assert np.all(np.isfinite(a))
    assert _rel_err(a, b) < 1e-5
    # the model is not degenerate: logits spread, and depend on the input
    assert a.std() > 0.5
    assert len(set(np.argmax(a, axis=-1).tolist())) > len(toks) // 4


def test_layouts_give_identical_transformers_logits(ckpts):
    d, cfg = ckpts["gqa"]
    toks = _tokens(cfg, 20)
    np.testing.assert_array_equal(H.hf_logits(d, toks), H.hf_logits(os.path.join(d, "original"), toks))


def test_logits_vary_with_input_and_are_causal(ckpts):
    d, cfg = ckpts["tiny4"]
    toks = _tokens(cfg, 30, seed=5)
    full = H.hf_logits(d, toks)
    prefix = H.hf_logits(d, toks[:17])
    np.testing.assert_allclose(prefix, full[:17], rtol=1e-5, atol=1e-5)
    other = H.hf_logits(d, toks[:16] + [(toks[16] + 1) % cfg.vocab_size] + toks[17:])
    np.testing.assert_allclose(other[:16], full[:16], rtol=1e-5, atol=1e-5)
    assert np.abs(other[16:] - full[16:]).max() > 1e-2


def test_greedy_agrees(ckpts):
    d, cfg = ckpts["tiny4"]
    toks = _tokens(cfg, 6, seed=9)
    g = H.hf_greedy(d, toks, 8)
    assert g == N.RefModel.load(d).greedy(toks, 8)
    assert all(0 <= t < cfg.vocab_size for t in g)


def _captured_masks(model, toks):
    """The additive attention masks transformers hands to each layer's attention."""
    masks = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def hook(mod, args, kwargs, i=i):
            masks[i] = kwargs["attention_mask"]
        hooks.append(layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([toks]), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return masks


@pytest.mark.parametrize("name", ["tiny4", "gqa", "mqa"])
def test_transformers_window_semantics_match_spec(ckpts, name):
    """Even layers: query i sees i-W < j <= i (W keys including itself); odd layers: j <= i."""
    d, cfg = ckpts[name]
    model = H.hf_model(d)
    T = 3 * cfg.sliding_window + 2
    masks = _captured_masks(model, _tokens(cfg, T))
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    for layer in range(cfg.num_hidden_layers):
        m = masks[layer]
        assert m is not None
        allowed = (m[0, 0].numpy() == 0)
        if layer % 2 == 0:
            expect = (j <= i) & (j > i - cfg.sliding_window)
            assert model.model.layers[layer].self_attn.sliding_window == cfg.sliding_window
        else:
            expect = j <= i
        np.testing.assert_array_equal(allowed, expect, err_msg=f"layer {layer}")
        assert np.all(np.isneginf(m[0, 0].numpy()[~expect]) | (m[0, 0].numpy()[~expect] < -1e30))


def test_window_changes_the_result(ckpts):
    """numpy with the spec window matches transformers; window W-1, W+1 or none does not."""
    d, cfg = ckpts["gqa"]
    toks = _tokens(cfg, 4 * cfg.sliding_window, seed=3)
    a = H.hf_logits(d, toks)
    ref = N.RefModel.load(d)
    assert _rel_err(a, ref.logits(toks)) < 1e-5
    W = cfg.sliding_window
    for w in (W - 1, W + 1, 10 ** 6):
        ref.cfg.sliding_window = w
        assert _rel_err(a, ref.logits(toks)) > 1e-3, w
    ref.cfg.sliding_window = W
    # before position W the window cannot bind: logits of the first W tokens are window-free
    ref.cfg.layer_sliding = [False] * cfg.num_hidden_layers
    assert _rel_err(a[:W], ref.logits(toks)[:W]) < 1e-5


def test_sinks_are_used(ckpts):
    d, cfg = ckpts["tiny4"]
    model = H.hf_model(d)
    toks = _tokens(cfg, 12, seed=1)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([toks]), use_cache=False, output_attentions=True)
    mass = [a[0].sum(-1).numpy() for a in out.attentions]  # [heads, T]: 1 - sink probability
    sink_p = 1 - np.stack(mass)
    assert np.all(sink_p > 0) and np.all(sink_p < 1)
    assert sink_p.max() > 0.3  # some head leans on the sink
    # removing the sinks changes the output
    ref = N.RefModel.load(d)
    a = H.hf_logits(d, toks)
    for L in ref.layers:
        L.sinks = np.full_like(L.sinks, -np.inf)
    assert _rel_err(a, ref.logits(toks)) > 1e-3


def test_transformers_dequantization_matches_numpy(ckpts):
    d, cfg = ckpts["gqa"]
    model = H.hf_model(d)
    raw = {}
    for fn in os.listdir(d):
        if fn.endswith(".safetensors"):
            raw.update(N.read_safetensors(os.path.join(d, fn)))
    ex = model.model.layers[1].mlp.experts
    w1 = N.mxfp4_dequant(raw["model.layers.1.mlp.experts.gate_up_proj_blocks"][2],
                         raw["model.layers.1.mlp.experts.gate_up_proj_scales"][2])
    w2 = N.mxfp4_dequant(raw["model.layers.1.mlp.experts.down_proj_blocks"][2],
                         raw["model.layers.1.mlp.experts.down_proj_scales"][2])
    assert w1.shape == (cfg.num_experts, 2 * cfg.intermediate_size, cfg.hidden_size)
    # transformers stores them transposed, (E, in, out)
    np.testing.assert_array_equal(ex.gate_up_proj.detach().numpy(), w1.transpose(0, 2, 1).astype(np.float32))
    np.testing.assert_array_equal(ex.down_proj.detach().numpy(), w2.transpose(0, 2, 1).astype(np.float32))


def test_rope_matches_transformers_and_spec(ckpts):
    d, cfg = ckpts["tiny4"]
    model = H.hf_model(d)
    inv, conc = N.yarn_inv_freq(64)
    np.testing.assert_allclose(model.model.rotary_emb.inv_freq.numpy(), inv, rtol=1e-6)
    assert model.model.rotary_emb.attention_scaling == pytest.approx(conc, rel=1e-12)
    assert conc == pytest.approx(1.3465736, abs=1e-7)
    inv_cfg, conc_cfg = cfg.yarn()
    np.testing.assert_allclose(inv_cfg, inv, rtol=1e-6)
    assert conc_cfg == pytest.approx(conc)
    # spec: i <= 8 keep the original frequency, i >= 18 are divided by 32
    freq = 150000.0 ** (np.arange(0, 64, 2) / 64)
    np.testing.assert_allclose(inv[:9], 1 / freq[:9])
    np.testing.assert_allclose(inv[18:], 1 / (32 * freq[18:]))
    low = 32 * math.log(4096 / (32 * 2 * math.pi)) / math.log(150000)
    assert low == pytest.approx(8.0928, abs=1e-4)


# ----------------------------------------------------------------------------- numpy kernels
def test_mxfp4_dequant_by_hand():
    blocks = np.zeros((1, 16), np.uint8)
    blocks[0, 0] = 0x21  # element 0 = low nibble 1 (+0.5), element 1 = high nibble 2 (+1.0)
    blocks[0, 1] = 0xF8  # element 2 = -0.0, element 3 = -6
    blocks[0, 15] = 0x7E  # element 30 = -4, element 31 = +6
    out = N.mxfp4_dequant(blocks, np.array([128], np.uint8))
    assert out.shape == (32,)
    assert out[:4].tolist() == [1.0, 2.0, 0.0, -12.0] and np.signbit(out[2])
    assert out[30:].tolist() == [-8.0, 12.0]
    assert np.all(out[4:30] == 0)
    out = N.mxfp4_dequant(blocks, np.array([127 - 3], np.uint8))
    assert out[1] == 1.0 / 8


def test_swiglu_and_clamps():
    h = np.array([[1.0, 2.0, 10.0, -10.0, -3.0, 8.0]])
    out = N.swiglu(h, limit=7.0)
    sig = lambda z: 1 / (1 + np.exp(-1.702 * z))  # noqa: E731
    exp = [1 * sig(1) * 3, 7 * sig(7) * (-6), -3 * sig(-3) * 8]
    np.testing.assert_allclose(out[0], exp)


def test_router_topk_then_softmax_ties_to_lower_id():
    logits = np.array([[1.0, 3.0, 3.0, 0.5, 2.0]])
    idx, w = N.router_topk_softmax(logits, 3)
    assert idx[0].tolist() == [1, 2, 4]
    e = np.exp(np.array([3.0, 3.0, 2.0]) - 3)
    np.testing.assert_allclose(w[0], e / e.sum())


def test_attention_window_and_sink_by_hand():
    rng = np.random.default_rng(0)
    T, D = 6, 4
    q = rng.standard_normal((T, 2, D))
    k = rng.standard_normal((T, 1, D))
    v = rng.standard_normal((T, 1, D))
    sinks = np.array([0.3, -1.0])
    out = N.attention(q, k, v, sinks, 0.5, window=2)
    for i in range(T):
        for h in range(2):
            js = [j for j in range(T) if i - 2 < j <= i]
            s = np.array([q[i, h] @ k[j, 0] * 0.5 for j in js] + [sinks[h]])
            p = np.exp(s - s.max())
            p /= p.sum()
            np.testing.assert_allclose(out[i, h], sum(p[n] * v[j, 0] for n, j in enumerate(js)))


def test_rmsnorm_and_rope_by_hand():
    x = np.array([[3.0, 4.0]])
    np.testing.assert_allclose(N.rmsnorm(x, np.array([1.0, 2.0]), eps=0.0), [[3 / math.sqrt(12.5), 8 / math.sqrt(12.5)]])
    x = np.arange(8, dtype=np.float64).reshape(1, 1, 8)
    inv = np.array([1.0, 0.5, 0.25, 0.125])
    cos, sin = N.rope_cos_sin([2], inv, 1.0)
    y = N.apply_rope(x, cos, sin)[0, 0]
    for d in range(4):  # dim d pairs with d + 4
        a = 2 * inv[d]
        assert y[d] == pytest.approx(x[0, 0, d] * math.cos(a) - x[0, 0, d + 4] * math.sin(a))
        assert y[d + 4] == pytest.approx(x[0, 0, d + 4] * math.cos(a) + x[0, 0, d] * math.sin(a))


@pytest.mark.slow
def test_real_dimensions_window_128(tmp_path):
    """gpt-oss-20b attention/expert shapes (2 layers, 4 experts, small vocab), 140 tokens > window 128."""
    cfg = preset("gpt-oss-20b", num_hidden_layers=2, num_experts=4, experts_per_token=2, vocab_size=512,
                 eos_token_id=None, pad_token_id=None)
    d = str(tmp_path / "real")
    S.write_checkpoint(cfg, d, seed=21)
    toks = _tokens(cfg, 140, seed=4)
    a = H.hf_logits(d, toks)
    ref = N.RefModel.load(d)
    assert _rel_err(a, ref.logits(toks)) < 1e-5
    ref.cfg.sliding_window = 127
    assert _rel_err(a, ref.logits(toks)) > 1e-3
    H.clear_cache(d)
