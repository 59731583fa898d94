"""Sampling: each filter against an independent pure-Python reference, chi-square on draws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gptoss.sampling import DEFAULT_STOP_TOKEN_IDS, Sample, Sampler, SamplingParams

# A small vocabulary with distinct logits (no ties unless a test wants them).
LOGITS = np.array([2.0, 1.5, 0.3, -0.7, 1.1, 0.0, -2.0, 0.9, 1.8, -0.2], dtype=np.float32)


# ---------------------------------------------------------------- independent reference
def ref_distribution(logits, *, temperature=1.0, top_k=None, top_p=1.0, min_p=0.0,
                     rep=1.0, presence=0.0, frequency=0.0, bias=None, generated=(), prompt=()):
    """Straightforward list-based re-implementation of the documented order of operations."""
    x = [float(v) for v in logits]
    for t in set(prompt) | set(generated):
        x[t] = x[t] / rep if x[t] > 0 else x[t] * rep
    for t in set(generated):
        x[t] -= presence + frequency * list(generated).count(t)
    for t, b in (bias or {}).items():
        x[t] += b
    if temperature == 0:
        best = max(range(len(x)), key=lambda i: (x[i], -i))
        return [1.0 if i == best else 0.0 for i in range(len(x))]
    x = [v / temperature for v in x]
    alive = list(range(len(x)))
    if top_k:
        alive = sorted(alive, key=lambda i: (-x[i], i))[:top_k]

    def softmax(ids):
        m = max(x[i] for i in ids)
        z = sum(math.exp(x[i] - m) for i in ids)
        return {i: math.exp(x[i] - m) / z for i in ids}

    pr = softmax(alive)
    if top_p < 1.0:
        kept, acc = [], 0.0
        for i in sorted(alive, key=lambda i: (-pr[i], i)):
            if acc < top_p:
                kept.append(i)
            acc += pr[i]
        alive = kept
        pr = softmax(alive)
    if min_p > 0:
        mx = max(pr.values())
        alive = [i for i in alive if pr[i] >= min_p * mx]
        pr = softmax(alive)
    return [pr.get(i, 0.0) for i in range(len(x))]


def chi2_critical(df: int, z: float = 3.719) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z=3.719: p = 1e-4)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def draw(params: SamplingParams, n: int, logits=LOGITS, generated=(), prompt=()):
    s = Sampler(params)
    return np.bincount([s.sample(logits, generated, prompt).token for _ in range(n)],
                       minlength=len(logits))


def assert_matches(counts: np.ndarray, expected: list[float]) -> None:
    n = counts.sum()
    exp = np.asarray(expected) * n
    # Excluded tokens must never be drawn.
    assert all(counts[i] == 0 for i in range(len(exp)) if expected[i] == 0.0), (counts, expected)
    support = [i for i in range(len(exp)) if expected[i] > 0]
    if len(support) == 1:
        assert counts[support[0]] == n
        return
    stat = sum((counts[i] - exp[i]) ** 2 / exp[i] for i in support)
    assert stat < chi2_critical(len(support) - 1), (stat, counts, exp)


# ---------------------------------------------------------------- exact distributions
CASES = [
    dict(),
    dict(temperature=0.5),
    dict(temperature=2.0),
    dict(top_k=3),
    dict(top_p=0.6),
    dict(min_p=0.3),
    dict(top_k=5, top_p=0.8, min_p=0.2, temperature=0.7),
    dict(rep=1.7, generated=[0, 8, 6], prompt=[3]),
    dict(presence=0.8, frequency=0.5, generated=[0, 0, 0, 8, 1]),
    dict(bias={6: 5.0, 0: -3.0}),
    dict(bias={2: 1.0}, top_k=4, rep=1.3, presence=0.4, frequency=0.3, temperature=1.3,
         generated=[1, 1, 2], prompt=[5, 6]),
]


def to_params(case: dict, **extra) -> tuple[SamplingParams, dict]:
    c = dict(case)
    gen, prompt = c.pop("generated", ()), c.pop("prompt", ())
    mapping = {"rep": "repetition_penalty", "presence": "presence_penalty",
               "frequency": "frequency_penalty", "bias": "logit_bias"}
    kw = {mapping.get(k, k): v for k, v in c.items()}
    return SamplingParams(**kw, **extra), {"generated": gen, "prompt": prompt}


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_probs_match_reference(case):
    params, hist = to_params(case)
    got = Sampler(params).probs(LOGITS, **hist)
    want = ref_distribution(LOGITS, **case)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    assert got.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_empirical_distribution_chi_square(case):
    params, hist = to_params(case, seed=1234)
    counts = draw(params, 20000, **hist)
    assert_matches(counts, ref_distribution(LOGITS, **case))


# ---------------------------------------------------------------- each filter removes exactly
def ranks() -> list[int]:
    return sorted(range(len(LOGITS)), key=lambda i: -LOGITS[i])


@pytest.mark.parametrize("k", [1, 2, 3, 7, 10, 50])
def test_top_k_keeps_exactly_k_largest(k):
    probs = Sampler(SamplingParams(top_k=k)).probs(LOGITS)
    assert set(np.flatnonzero(probs)) == set(ranks()[: min(k, len(LOGITS))])


def test_top_k_ties_prefer_lower_ids():
    x = np.array([1.0, 3.0, 1.0, 1.0, 3.0, 0.0], dtype=np.float32)
    probs = Sampler(SamplingParams(top_k=3)).probs(x)
    assert set(np.flatnonzero(probs)) == {1, 4, 0}


def test_top_p_keeps_shortest_prefix_reaching_mass():
    x = np.log(np.array([0.4, 0.05, 0.25, 0.2, 0.1])).astype(np.float32)
    for top_p, want in [(0.3, {0}), (0.39, {0}), (0.41, {0, 2}), (0.64, {0, 2}),
                        (0.66, {0, 2, 3}), (0.86, {0, 2, 3, 4}), (0.99, {0, 1, 2, 3, 4})]:
        probs = Sampler(SamplingParams(top_p=top_p)).probs(x)
        assert set(np.flatnonzero(probs)) == want, top_p


def test_min_p_threshold_relative_to_max():
    x = np.log(np.array([0.5, 0.26, 0.24, 0.1, 0.02])).astype(np.float64)
    probs = Sampler(SamplingParams(min_p=0.5)).probs(x)
    assert set(np.flatnonzero(probs)) == {0, 1}  # 0.24 < 0.25 is dropped, 0.26 kept
    probs = Sampler(SamplingParams(min_p=0.05)).probs(x)
    assert set(np.flatnonzero(probs)) == {0, 1, 2, 3}


def test_filters_then_renormalise():
    probs = Sampler(SamplingParams(top_k=2)).probs(LOGITS)
    a, b = LOGITS[0], LOGITS[8]
    assert probs[0] == pytest.approx(1 / (1 + math.exp(b - a)))


# ---------------------------------------------------------------- penalties, bias, greedy
def test_repetition_penalty_divides_positive_multiplies_negative():
    p = Sampler(SamplingParams(repetition_penalty=2.0))
    out = p.process(LOGITS, generated=[0], prompt=[3])
    assert out[0] == pytest.approx(1.0) and out[3] == pytest.approx(-1.4)
    assert out[1] == pytest.approx(1.5)  # untouched


def test_presence_and_frequency_penalties():
    p = Sampler(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25))
    out = p.process(LOGITS, generated=[1, 1, 1, 4], prompt=[2, 2])
    assert out[1] == pytest.approx(1.5 - 0.5 - 0.75)
    assert out[4] == pytest.approx(1.1 - 0.5 - 0.25)
    assert out[2] == pytest.approx(0.3)  # prompt tokens are not penalised


def test_logit_bias_forces_and_bans():
    s = Sampler(SamplingParams(logit_bias={6: 100.0}, seed=0))
    assert all(s.sample(LOGITS).token == 6 for _ in range(50))
    s = Sampler(SamplingParams(logit_bias={0: -100.0}, temperature=0))
    assert s.sample(LOGITS).token == 8
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Sampler(SamplingParams(logit_bias={10: 1.0})).sample(LOGITS)


def test_logit_bias_accepts_json_string_keys():
    assert SamplingParams(logit_bias={"5": 2}).logit_bias == {5: 2.0}


def test_greedy_is_argmax_and_lowest_id_on_ties():
    s = Sampler(SamplingParams(temperature=0, top_k=3, top_p=0.1))
    assert s.sample(LOGITS).token == 0
    assert s.sample(np.array([0.0, 5.0, 5.0], dtype=np.float32)).token == 1
    # greedy sees penalties
    s = Sampler(SamplingParams(temperature=0, presence_penalty=1.0))
    assert s.sample(LOGITS, generated=[0]).token == 8


def test_vocab_limit_masks_high_ids():
    x = np.zeros(10, dtype=np.float32)
    x[9] = 50.0
    s = Sampler(SamplingParams(seed=3), vocab_limit=5)
    assert all(s.sample(x).token < 5 for _ in range(200))
    assert Sampler(SamplingParams(temperature=0), vocab_limit=5).sample(x).token == 0


def test_all_masked_raises():
    x = np.full(4, -np.inf, dtype=np.float32)
    with pytest.raises(ValueError, match="no token"):
        Sampler(SamplingParams()).sample(x)


def test_nan_logits_are_never_sampled():
    x = np.array([np.nan, 0.0, np.nan, 0.0], dtype=np.float32)
    s = Sampler(SamplingParams(seed=0))
    assert {s.sample(x).token for _ in range(100)} == {1, 3}


# ---------------------------------------------------------------- seeds, logprobs
def test_same_seed_same_tokens_different_seed_differs():
    def run(seed):
        s = Sampler(SamplingParams(seed=seed, temperature=1.5))
        return [s.sample(LOGITS).token for _ in range(64)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_logprobs_are_raw_model_log_softmax():
    s = Sampler(SamplingParams(logprobs=3, temperature=0, presence_penalty=2.0))
    out = s.sample(LOGITS, generated=[0])
    lse = math.log(sum(math.exp(float(v)) for v in LOGITS))
    assert isinstance(out, Sample) and out.token == 8
    assert out.logprob == pytest.approx(float(LOGITS[8]) - lse)
    assert [t for t, _ in out.top_logprobs] == [0, 8, 1]
    assert out.top_logprobs[0][1] == pytest.approx(float(LOGITS[0]) - lse)
    assert Sampler(SamplingParams()).sample(LOGITS).logprob is None
    zero = Sampler(SamplingParams(logprobs=0)).sample(LOGITS)
    assert zero.top_logprobs == [] and zero.logprob is not None


def test_large_vocab_float32_logits():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(201088) * 3).astype(np.float32)
    s = Sampler(SamplingParams(top_k=50, top_p=0.9, seed=1, logprobs=5))
    out = s.sample(x)
    assert out.token in set(np.argsort(-x)[:50].tolist())
    assert len(out.top_logprobs) == 5


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("kw", [
    dict(temperature=-0.1), dict(temperature=float("nan")), dict(temperature="hot"),
    dict(top_k=-1), dict(top_k=2.5), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=-0.1),
    dict(min_p=1.1), dict(repetition_penalty=0.0), dict(presence_penalty=3.0),
    dict(frequency_penalty=-2.5), dict(logit_bias={-1: 1.0}), dict(logit_bias={1: 101.0}),
    dict(logit_bias=[1, 2]), dict(seed=1.5), dict(seed=-3), dict(stop_token_ids=[-1]),
    dict(stop_token_ids=["x"]), dict(stop=[""]), dict(stop=[3]), dict(max_tokens=0),
    dict(max_tokens=2.0), dict(logprobs=-1), dict(temperature=True),
])
def test_invalid_params_raise_value_error(kw):
    with pytest.raises(ValueError, match="invalid sampling parameter"):
        SamplingParams(**kw)


def test_defaults_and_normalisation():
    p = SamplingParams(stop="###", top_k=0, stop_token_ids=None)
    assert p.stop == ("###",) and p.top_k is None and p.stop_token_ids == ()
    assert SamplingParams().stop_token_ids == DEFAULT_STOP_TOKEN_IDS == (200002, 200012)
    with pytest.raises(ValueError, match="unknown sampling parameter"):
        SamplingParams.from_kwargs(temprature=0.5)
    q = SamplingParams.from_kwargs(SamplingParams(seed=3), temperature=0.2)
    assert q.seed == 3 and q.temperature == 0.2
