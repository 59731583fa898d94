"""End-to-end logits against Hugging Face transformers' GptOssForCausalLM (fp32, CPU).

The reference loads the checkpoint directory itself (dequantizing MXFP4 with its own code);
nothing of the engine is involved. Tolerances: max abs error 1e-3 and relative L2 error 2e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

import gptoss

pytest.importorskip("torch")
pytest.importorskip("transformers")
from hf_reference import hf_greedy, hf_logits  # noqa: E402

CASES = [  # (config, seed, layout, sequence length)
    ("tiny", 0, "hf", 40),
    ("tiny", 1, "original", 33),
    ("tiny4", 2, "hf", 29),
    ("tiny4", 3, "original", 24),
    ("gqa4", 4, "hf", 37),
    ("hd32", 5, "original", 26),
]


def _tokens(vocab: int, n: int, seed: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(1000 + seed).integers(0, vocab, n)]


@pytest.mark.parametrize("name,seed,layout,n", CASES)
def test_logits_match_transformers(make_checkpoint, name, seed, layout, n):
    d = make_checkpoint(name, seed, layout)
    m = gptoss.Model(d)
    toks = _tokens(m.config.vocab_size, n, seed)
    assert n > m.config.sliding_window  # the window must actually cut something
    ours = m.forward(toks)
    ref = hf_logits(d, toks)
    assert ours.shape == ref.shape == (n, m.config.vocab_size)
    assert ours.dtype == np.float32
    err = np.abs(ours - ref).max()
    rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert err < 1e-3, f"max abs error {err}"
    assert rel < 2e-5, f"relative L2 error {rel}"
    # The logits must depend on the input (a test on a degenerate model would prove nothing).
    assert np.std(ref[-1]) > 0.1


@pytest.mark.parametrize("name,seed,layout", [("tiny", 7, "hf"), ("gqa4", 8, "original")])
def test_greedy_continuation_matches_transformers(make_checkpoint, name, seed, layout):
    d = make_checkpoint(name, seed, layout)
    m = gptoss.Model(d)
    prompt = _tokens(m.config.vocab_size, 12, seed)
    n = 10
    s = m.new_sequence()
    logits = s.prefill(prompt)
    ours = []
    for _ in range(n):
        t = int(np.argmax(logits))
        ours.append(t)
        logits = s.decode(t)
    assert ours == hf_greedy(d, prompt, n)


def test_both_layouts_of_one_seed_agree(make_checkpoint):
    # The synthetic writer stores one model in both layouts; the loader must read both the same way.
    a = gptoss.Model(make_checkpoint("tiny4", 11, "hf"))
    b = gptoss.Model(make_checkpoint("tiny4", 11, "original"))
    toks = _tokens(1024, 20, 11)
    np.testing.assert_array_equal(a.forward(toks), b.forward(toks))


# Structural edge cases of the config: every dimension comes from config.json.
EDGE_CONFIGS = {
    "no_gqa": dict(num_attention_heads=2, num_key_value_heads=2),
    "top_k_all": dict(num_experts=3, experts_per_token=3),
    "top_1": dict(num_experts=5, experts_per_token=1),
    "head_dim_128": dict(head_dim=128, num_attention_heads=2, num_key_value_heads=1),
    "hidden_32": dict(hidden_size=32, intermediate_size=32),
    "window_1": dict(sliding_window=1),
    "layer_types": dict(num_hidden_layers=3, layer_types=["full_attention", "sliding_attention", "sliding_attention"]),
    "rope_truncate_small_theta": dict(rope_truncate=True, rope_theta=10000.0, rope_scaling_factor=4.0,
                                      initial_context_length=64),
    "group_16": dict(num_attention_heads=16, num_key_value_heads=1, head_dim=16),
    "eps_limit": dict(rms_norm_eps=1e-3, swiglu_limit=3.0),
}


@pytest.mark.parametrize("name", sorted(EDGE_CONFIGS))
def test_edge_configs_match_transformers(tmp_path, name):
    from gptoss.config import preset
    from gptoss.synthetic import write_checkpoint

    cfg = preset("tiny", **EDGE_CONFIGS[name])
    write_checkpoint(cfg, str(tmp_path), seed=len(name))
    m = gptoss.Model(str(tmp_path))
    toks = _tokens(cfg.vocab_size, 31, len(name))
    ours, ref = m.forward(toks), hf_logits(str(tmp_path), toks)
    assert np.abs(ours - ref).max() < 1e-3
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 2e-5
