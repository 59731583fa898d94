"""The sampler's allowed-token mask: masked ids are never drawn, the draw among the allowed ones
follows the renormalised distribution, log-probabilities stay the model's."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gptoss.sampling import Sampler, SamplingParams


def packed(bits: np.ndarray) -> np.ndarray:
    """bool [n] -> llguidance's bitmask (independent of the code under test)."""
    words = np.zeros((bits.size + 31) // 32, np.uint32)
    for i in np.flatnonzero(bits):
        words[i // 32] |= np.uint32(1 << (i % 32))
    return words.view(np.int32)


def test_bool_and_bitmask_forms_agree():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(1000).astype(np.float32)
    bits = rng.random(1000) < 0.05
    for p in (SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=5, top_p=0.8)):
        a = Sampler(p).probs(logits, allowed=bits)
        b = Sampler(p).probs(logits, allowed=packed(bits))
        assert np.array_equal(a, b)
        assert a[~bits].sum() == 0 and math.isclose(a.sum(), 1.0, rel_tol=1e-9)


def test_draws_follow_the_renormalised_distribution():
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal(64) * 2).astype(np.float32)
    bits = np.zeros(64, bool)
    bits[[3, 7, 8, 20, 41, 63]] = True
    x = logits.astype(np.float64)[bits]
    want = np.exp(x - x.max())
    want /= want.sum()
    s = Sampler(SamplingParams(temperature=1.0, seed=5))
    n = 20000
    counts = np.bincount([s.sample(logits, allowed=packed(bits)).token for _ in range(n)],
                         minlength=64)
    assert counts[~bits].sum() == 0
    chi2 = (((counts[bits] - n * want) ** 2) / (n * want)).sum()
    assert chi2 < 25.7  # df=5, p = 1e-4


def test_mask_comes_before_temperature_and_filters():
    logits = np.array([5.0, 4.0, 3.0, 2.0, 1.0], np.float32)
    bits = np.array([False, False, True, True, True])
    # greedy: the best allowed id, not the best id
    assert Sampler(SamplingParams(temperature=0)).sample(logits, allowed=bits).token == 2
    # top_k=1 keeps the best *allowed* id (a mask applied after top-k would leave nothing)
    assert Sampler(SamplingParams(top_k=1, seed=0)).sample(logits, allowed=bits).token == 2
    pr = Sampler(SamplingParams(top_p=0.5)).probs(logits, allowed=bits)
    assert pr[2] == 1.0
    # a mask shorter than the vocabulary disallows the ids past its end
    assert Sampler(SamplingParams(temperature=0)).sample(logits, allowed=np.array([False, True])).token == 1


def test_logprobs_are_the_models_own():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal(50).astype(np.float32)
    bits = np.zeros(50, bool)
    bits[[10, 11]] = True
    s = Sampler(SamplingParams(temperature=0.5, logprobs=3, seed=0)).sample(logits, allowed=bits)
    x = logits.astype(np.float64)
    lse = x.max() + math.log(np.exp(x - x.max()).sum())
    assert s.token in (10, 11)
    assert math.isclose(s.logprob, x[s.token] - lse, rel_tol=1e-5)
    top = np.argsort(-x)[:3]
    assert [t for t, _ in s.top_logprobs] == list(top)  # unmasked ranking


def test_bad_masks_are_clear_errors():
    logits = np.zeros(40, np.float32)
    s = Sampler(SamplingParams(seed=0))
    with pytest.raises(ValueError, match="allows no token"):
        s.sample(logits, allowed=np.zeros(40, bool))
    with pytest.raises(ValueError, match="allows no token"):
        s.sample(logits, allowed=np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="dtype"):
        s.sample(logits, allowed=np.ones(40, np.float32))
    with pytest.raises(ValueError, match="1-D"):
        s.sample(logits, allowed=np.ones((2, 40), bool))
    only_masked = np.zeros(40, bool)
    only_masked[39] = True
    with pytest.raises(ValueError, match="no token can be sampled"):
        Sampler(SamplingParams(seed=0), vocab_limit=30).sample(logits, allowed=only_masked)


def test_token_for_takes_the_mask():
    logits = np.array([0.0, 1.0, 2.0, 3.0], np.float32)
    bits = np.array([True, True, False, False])
    s = Sampler(SamplingParams(temperature=1.0))
    assert {s.token_for(logits, u, allowed=bits) for u in np.linspace(0, 0.999, 50)} == {0, 1}
