"""Token sampling: validated parameters and a numpy sampler.

`SamplingParams` holds every knob; `Sampler` turns one logits vector (the model's float32
``[vocab]`` output) plus the token history into one token id, and, when asked, log-probabilities.

Order of operations (the same as vLLM / HF ``generate``; each step sees the previous one's output):

1. **repetition penalty** (HF/CTRL style) on every id seen in the prompt or the generated tokens:
   a positive logit is divided by the penalty, a negative one multiplied by it;
2. **presence penalty** (subtract ``presence_penalty`` once from every id that was generated) and
   **frequency penalty** (subtract ``frequency_penalty * count`` for each generated id), OpenAI
   semantics, generated tokens only;
3. **logit bias**: ``logits[id] += bias``;
4. **temperature**: ``temperature == 0`` means greedy (argmax of the penalised, biased logits,
   lowest id on ties; steps 5-7 and the random draw are skipped); otherwise ``logits /= T``;
5. **top-k**: keep exactly the ``k`` largest logits (ties at the boundary broken towards the lower
   id, so exactly ``k`` survive);
6. **top-p** (nucleus): on the softmax of the survivors, sorted by probability (ties: lower id
   first), keep the shortest prefix whose cumulative probability reaches ``top_p``; a token is kept
   iff the mass strictly before it is ``< top_p``, so the most likely token always survives;
7. **min-p**: on the softmax of the survivors, drop tokens whose probability is below
   ``min_p * max_probability``;
8. draw one token from the renormalised softmax of the survivors (inverse-CDF with one uniform
   number from a PCG64 generator seeded with ``seed``).

Log-probabilities (``logprobs=n``) describe the model's own distribution: ``log_softmax`` of the
raw logits, before penalties, bias, temperature and filters (as vLLM and the OpenAI API report
them). The chosen token's log-probability and the ``n`` most likely ids are returned.

An optional **allowed-token mask** (``allowed=``, from a structured-output constraint: a bool array
over the ids, or a packed bitmask of ``ceil(vocab / 32)`` 32-bit words, bit ``i % 32`` of word
``i // 32`` set when id ``i`` may be drawn, llguidance's layout) makes every other logit ``-inf``
before step 1, so penalties, temperature and the filters see only allowed ids; ids past the
mask's end are disallowed. A mask that allows no id raises `ValueError`. Log-probabilities are
still the model's own (unmasked) distribution.

Penalties, bias and temperature are applied in float64; the softmax exponentials are taken in
float32 and normalised in float64 (probabilities exact to ~1e-7 relative). Ids at or beyond ``vocab_limit`` (a
tokenizer smaller than the model's vocabulary, see `Sampler`) are never sampled.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from .tokenizer import CALL_ID, ENDOFTEXT_ID, RETURN_ID

__all__ = [
    "SamplingParams",
    "Sampler",
    "Sample",
    "DeviceDraw",
    "DEFAULT_STOP_TOKEN_IDS",
    "COMPLETION_STOP_TOKEN_IDS",
]

# Harmony's `stop_tokens_for_assistant_actions`.
DEFAULT_STOP_TOKEN_IDS: tuple[int, ...] = (RETURN_ID, CALL_ID)
# A raw completion (no chat rendering) also ends at <|endoftext|>.
COMPLETION_STOP_TOKEN_IDS: tuple[int, ...] = (ENDOFTEXT_ID, RETURN_ID, CALL_ID)


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop. Invalid values raise `ValueError` on construction.

    temperature: 0 = greedy, otherwise > 0 (default 1.0).
    top_k: keep the k most likely tokens; None or 0 = off.
    top_p: nucleus mass in (0, 1]; 1.0 = off.
    min_p: in [0, 1]; drop tokens less likely than ``min_p`` times the most likely one; 0 = off.
    repetition_penalty: > 0; 1.0 = off (prompt and generated ids).
    presence_penalty, frequency_penalty: in [-2, 2]; 0 = off (generated ids only).
    logit_bias: ``{token_id: bias}``, bias in [-100, 100].
    seed: same seed, same logits -> same tokens. None = fresh OS entropy.
    stop_token_ids: sampling one of these ends generation (the id is reported, never decoded
        into text). Default: harmony's ``<|return|>`` (200002) and ``<|call|>`` (200012).
    stop: stop strings; generation ends when the generated text contains one; the returned text
        stops right before it.
    max_tokens: upper bound on generated tokens; None = until a stop or the context is full.
    logprobs: None = no log-probabilities; n >= 0 = chosen token's plus the n most likely.
    """

    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Optional[Mapping[int, float]] = None
    seed: Optional[int] = None
    stop_token_ids: Sequence[int] = DEFAULT_STOP_TOKEN_IDS
    stop: Union[str, Sequence[str], None] = None
    max_tokens: Optional[int] = None
    logprobs: Optional[int] = None

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"invalid sampling parameter {name}={getattr(self, name)!r}: {why}")

        def real(name: str) -> float:
            v = getattr(self, name)
            if not _is_real(v) or not math.isfinite(float(v)):
                raise bad(name, "must be a finite number")
            setattr(self, name, float(v))
            return float(v)

        if real("temperature") < 0:
            raise bad("temperature", "must be >= 0 (0 = greedy)")
        if self.top_k is not None:
            if not _is_int(self.top_k) or self.top_k < 0:
                raise bad("top_k", "must be a non-negative integer (None or 0 = off)")
            self.top_k = int(self.top_k) or None
        if not 0.0 < real("top_p") <= 1.0:
            raise bad("top_p", "must be in (0, 1]")
        if not 0.0 <= real("min_p") <= 1.0:
            raise bad("min_p", "must be in [0, 1]")
        if real("repetition_penalty") <= 0:
            raise bad("repetition_penalty", "must be > 0 (1 = off)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= real(name) <= 2.0:
                raise bad(name, "must be in [-2, 2]")
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, Mapping):
                raise bad("logit_bias", "must be a mapping {token_id: bias}")
            clean: dict[int, float] = {}
            for k, v in self.logit_bias.items():
                # JSON objects have string keys: accept "123".
                if isinstance(k, str) and k.strip().lstrip("-").isdigit():
                    k = int(k)
                if not _is_int(k) or k < 0:
                    raise bad("logit_bias", f"key {k!r} is not a token id (integer >= 0)")
                if not _is_real(v) or not math.isfinite(float(v)) or not -100 <= float(v) <= 100:
                    raise bad("logit_bias", f"bias {v!r} for token {k} must be in [-100, 100]")
                clean[int(k)] = float(v)
            self.logit_bias = clean
        if self.seed is not None and not _is_int(self.seed):
            raise bad("seed", "must be an integer or None")
        if self.seed is not None and self.seed < 0:
            raise bad("seed", "must be >= 0")
        if self.stop_token_ids is None:
            self.stop_token_ids = ()
        if _is_int(self.stop_token_ids):
            self.stop_token_ids = (self.stop_token_ids,)  # type: ignore[assignment]
        try:
            ids = tuple(self.stop_token_ids)
        except TypeError:
            raise bad("stop_token_ids", "must be a sequence of token ids") from None
        if not all(_is_int(t) and t >= 0 for t in ids):
            raise bad("stop_token_ids", "every entry must be an integer token id >= 0")
        self.stop_token_ids = tuple(int(t) for t in ids)
        if self.stop is None:
            self.stop = ()
        elif isinstance(self.stop, str):
            self.stop = (self.stop,)
        else:
            try:
                self.stop = tuple(self.stop)
            except TypeError:
                raise bad("stop", "must be a string or a sequence of strings") from None
        if not all(isinstance(s, str) and s for s in self.stop):
            raise bad("stop", "every stop string must be a non-empty string")
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            raise bad("max_tokens", "must be a positive integer or None")
        if self.logprobs is not None and (not _is_int(self.logprobs) or self.logprobs < 0):
            raise bad("logprobs", "must be a non-negative integer or None")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def merged(cls, base: Optional["SamplingParams"] = None, **kwargs: object) -> "SamplingParams":
        """`base` (default: the defaults) with `kwargs` replaced; `base` itself when there are none."""
        return base if base is not None and not kwargs else cls.from_kwargs(base, **kwargs)

    def for_index(self, i: int) -> "SamplingParams":
        """The parameters of the i-th of several samples of one prompt (n > 1, batches): seed + i,
        so each sample's tokens depend on its own seed only."""
        return self if self.seed is None or i == 0 else SamplingParams.from_kwargs(self, seed=self.seed + i)

    @classmethod
    def from_kwargs(cls, base: Optional["SamplingParams"] = None, **kwargs: object) -> "SamplingParams":
        """`base` with `kwargs` replaced; unknown names raise `ValueError` (they are user input)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(names))}")
        values = {f.name: getattr(base, f.name) for f in fields(cls)} if base is not None else {}
        values.update(kwargs)
        return cls(**values)  # type: ignore[arg-type]


@dataclass
class Sample:
    """One sampled token. `logprob`/`top_logprobs` are set only when ``params.logprobs`` is set;
    `top_logprobs` lists ``(id, logprob)`` most likely first."""

    token: int
    logprob: Optional[float] = None
    top_logprobs: Optional[list[tuple[int, float]]] = None

    def __int__(self) -> int:
        return self.token


@dataclass(frozen=True)
class DeviceDraw:
    """One row's draw on the device (`Model.step_sample`; the C++ ``SampleParams`` of
    csrc/step_plan.h plus what the step returns besides the token): steps 4-8 of `Sampler.process`
    with the uniform number `u` already drawn, and steps 1-3 as sparse `penalties`
    ``(ids, repetition factor, amount to subtract, bias)``, or None."""

    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0            # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    u: float = 0.0            # in [0, 1)
    vocab_limit: int = 0      # 0 = every id
    logprobs: Optional[int] = None  # top log-probabilities to return (None: none)
    penalties: Optional[tuple] = None


# A row whose token is not wanted (a prompt chunk that is not the last): greedy, so no random
# number of the request's stream is spent on it.
GREEDY_DRAW = DeviceDraw()


def _counts(ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    arr = np.fromiter((int(t) for t in ids), dtype=np.int64)
    if arr.size == 0:
        return arr, arr
    return np.unique(arr, return_counts=True)


class Sampler:
    """Stateful sampler: owns the random generator, so a run of draws is reproducible from
    ``params.seed``.

    vocab_limit: ids ``>= vocab_limit`` are never sampled (used when the tokenizer knows fewer ids
    than the model has logits). None = every logit is eligible.
    """

    def __init__(self, params: Optional[SamplingParams] = None, vocab_limit: Optional[int] = None):
        self.params = params if params is not None else SamplingParams()
        if vocab_limit is not None and (not _is_int(vocab_limit) or vocab_limit < 1):
            raise ValueError(f"vocab_limit must be a positive integer, got {vocab_limit!r}")
        self.vocab_limit = vocab_limit
        self.rng = np.random.Generator(np.random.PCG64(self.params.seed))

    # ------------------------------------------------------------------ processing
    def _check_logits(self, logits: np.ndarray) -> np.ndarray:
        x = np.asarray(logits)
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"logits must be a non-empty 1-D array, got shape {x.shape}")
        return x.astype(np.float64, copy=True)

    def process(self, logits: np.ndarray, generated: Sequence[int] = (),
                prompt: Sequence[int] = (), allowed: Optional[np.ndarray] = None) -> np.ndarray:
        """Steps 1-4 (penalties, bias, temperature) after the `allowed` mask. Returns float64
        logits, ``-inf`` where an id cannot be sampled. With temperature 0 the logits are returned
        unscaled."""
        p = self.params
        x = self._check_logits(logits)
        vocab = x.size
        if self.vocab_limit is not None and self.vocab_limit < vocab:
            x[self.vocab_limit:] = -np.inf
        x[np.isnan(x)] = -np.inf
        if allowed is not None:
            x[~_allowed_ids(allowed, vocab)] = -np.inf

        if p.repetition_penalty != 1.0:
            seen, _ = _counts(list(prompt) + list(generated))
            seen = seen[(seen >= 0) & (seen < vocab)]
            v = x[seen]
            x[seen] = np.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)
        if p.presence_penalty != 0.0 or p.frequency_penalty != 0.0:
            ids, cnt = _counts(generated)
            ok = (ids >= 0) & (ids < vocab)
            ids, cnt = ids[ok], cnt[ok]
            x[ids] -= p.presence_penalty + p.frequency_penalty * cnt
        if p.logit_bias:
            for tid, b in p.logit_bias.items():
                if tid >= vocab:
                    raise ValueError(f"logit_bias token id {tid} is outside the vocabulary "
                                     f"(size {vocab})")
                x[tid] += b
        if not p.greedy and p.temperature != 1.0:
            x /= p.temperature
        return x

    def probs(self, logits: np.ndarray, generated: Sequence[int] = (),
              prompt: Sequence[int] = (), allowed: Optional[np.ndarray] = None) -> np.ndarray:
        """The exact distribution the next draw comes from (float64 ``[vocab]``, sums to 1).
        Greedy gives a one-hot vector."""
        x = self.process(logits, generated, prompt, allowed)
        out = np.zeros_like(x)
        if self.params.greedy:
            out[_argmax(x)] = 1.0
            return out
        ids, pr = self._distribution(x)
        if ids is None:
            return pr
        out[ids] = pr
        return out

    def _distribution(self, x: np.ndarray) -> tuple[Optional[np.ndarray], np.ndarray]:
        """Steps 5-7 on processed logits: (surviving ids or None for "all ids", their
        probabilities). Survivors are in ascending id order."""
        p = self.params
        finite = np.isfinite(x)
        if not finite.any():
            raise ValueError("no token can be sampled: every logit is -inf or masked")
        ids: Optional[np.ndarray] = None if finite.all() else np.flatnonzero(finite)
        n_alive = x.size if ids is None else ids.size
        if p.top_k is not None and p.top_k < n_alive:
            ids = _top_k_ids(x, p.top_k)
        pr = _softmax(x if ids is None else x[ids])
        if p.top_p < 1.0:
            keep = _top_p_keep(pr, p.top_p)
            if keep is not None:
                ids = keep if ids is None else ids[keep]
                pr = _softmax(x[ids])
        if p.min_p > 0.0:
            keep_mask = pr >= p.min_p * pr.max()
            if not keep_mask.all():
                sel = np.flatnonzero(keep_mask)
                ids = sel if ids is None else ids[sel]
                pr = _softmax(x[ids])
        return ids, pr

    # ------------------------------------------------------------------ sampling
    def sample(self, logits: np.ndarray, generated: Sequence[int] = (),
               prompt: Sequence[int] = (), allowed: Optional[np.ndarray] = None) -> Sample:
        """Pick the next token after `generated` (the tokens produced so far in this generation;
        `prompt` matters only for the repetition penalty), among the `allowed` ids if given."""
        token = self._pick(self.process(logits, generated, prompt, allowed), None)
        return self._with_logprobs(token, logits)

    def token_for(self, logits: np.ndarray, u: float, generated: Sequence[int] = (),
                  prompt: Sequence[int] = (), allowed: Optional[np.ndarray] = None) -> int:
        """The token `sample` returns when its uniform draw is `u` (in [0, 1)); the generator is
        not used. For samplers that draw `u` on the host and pick the token elsewhere (the CUDA
        backend's ``sample_rows``), and for testing them. Greedy ignores `u`."""
        if not 0.0 <= u < 1.0:
            raise ValueError(f"u must be in [0, 1), got {u!r}")
        return self._pick(self.process(logits, generated, prompt, allowed), float(u))

    @property
    def device_params_ok(self) -> bool:
        """Whether a device sampler (the CUDA backend's ``step_sample``) can draw for these params:
        everything but more than 20 logprobs."""
        p = self.params
        return p.logprobs is None or p.logprobs <= 20

    def device_params(self, generated: Sequence[int] = (), prompt: Sequence[int] = ()) -> DeviceDraw:
        """The next draw's parameters for ``Model.step_sample``: the uniform ``u`` comes from this
        sampler's generator exactly as `sample` would take it (none for greedy), so a seeded run
        gives the same tokens on the host and on the device (up to fp32 rounding at a boundary).
        Penalties and logit bias (steps 1-3) become ``penalties``: (ids, rep, sub, bias) arrays,
        one entry per affected id."""
        if not self.device_params_ok:
            raise ValueError("over 20 logprobs need the host sampler")
        p = self.params
        u = 0.0 if p.greedy else float(self.rng.random())
        return DeviceDraw(temperature=float(p.temperature), top_k=int(p.top_k or 0), top_p=float(p.top_p),
                          min_p=float(p.min_p), u=min(u, 0.99999994), vocab_limit=int(self.vocab_limit or 0),
                          logprobs=p.logprobs, penalties=self._penalty_entries(generated, prompt))

    def _penalty_entries(self, generated: Sequence[int], prompt: Sequence[int]) -> Optional[tuple]:
        """Steps 1-3 as sparse edits (see `process`): sorted ids, repetition factor (1 = none),
        amount to subtract, bias; None when there is nothing to do. Vectorised: it runs every step."""
        p = self.params
        parts = []
        seen = gen = cnt = None
        if p.repetition_penalty != 1.0:
            seen, _ = _counts(list(prompt) + list(generated))
            parts.append(seen)
        if p.presence_penalty != 0.0 or p.frequency_penalty != 0.0:
            gen, cnt = _counts(generated)
            parts.append(gen)
        bias_ids = np.fromiter((int(t) for t in (p.logit_bias or {})), np.int64)
        parts.append(bias_ids)
        ids = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        ids = ids[ids >= 0]
        if ids.size == 0:
            return None
        rep = np.ones(ids.size, np.float32)
        sub = np.zeros(ids.size, np.float32)
        bias = np.zeros(ids.size, np.float32)
        if seen is not None:
            rep[np.isin(ids, seen)] = p.repetition_penalty
        if gen is not None:
            ok = gen >= 0
            sub[np.searchsorted(ids, gen[ok])] = p.presence_penalty + p.frequency_penalty * cnt[ok]
        if bias_ids.size:
            vals = np.fromiter((float(b) for b in p.logit_bias.values()), np.float64)
            ok = bias_ids >= 0
            bias[np.searchsorted(ids, bias_ids[ok])] = vals[ok]
        return ids.astype(np.int32), rep, sub, bias

    def _pick(self, x: np.ndarray, u: Optional[float]) -> int:
        """Step 4's greedy argmax or steps 5-8 on processed logits; u None = draw it now."""
        if self.params.greedy:
            if not np.isfinite(x).any():
                raise ValueError("no token can be sampled: every logit is -inf or masked")
            return _argmax(x)
        ids, pr = self._distribution(x)
        cdf = np.cumsum(pr)
        # Inverse CDF over the survivors in ascending id order.
        target = (self.rng.random() if u is None else u) * cdf[-1]
        j = min(int(np.searchsorted(cdf, target, side="right")), cdf.size - 1)
        return int(j if ids is None else ids[j])

    def _with_logprobs(self, token: int, logits: np.ndarray) -> Sample:
        n = self.params.logprobs
        if n is None:
            return Sample(token)
        x = np.asarray(logits, dtype=np.float64)
        if self.vocab_limit is not None and self.vocab_limit < x.size:
            x = x[: self.vocab_limit]
        m = x.max()
        lse = m + math.log(float(np.exp((x - m).astype(np.float32)).sum(dtype=np.float64)))
        top: list[tuple[int, float]] = []
        if n > 0:
            k = min(n, x.size)
            part = np.argpartition(x, x.size - k)[x.size - k:]
            part = part[np.lexsort((part, -x[part]))]
            top = [(int(i), float(x[i] - lse)) for i in part]
        return Sample(token, float(x[token] - lse) if token < x.size else -math.inf, top)


def _allowed_ids(allowed: np.ndarray, vocab: int) -> np.ndarray:
    """The ``allowed=`` mask as a bool ``[vocab]`` array (see the module docstring)."""
    a = np.asarray(allowed)
    if a.ndim != 1:
        raise ValueError(f"the allowed-token mask must be 1-D, got shape {a.shape}")
    if a.dtype == np.bool_:
        bits = a[:vocab]
    elif a.dtype in (np.int32, np.uint32):
        bits = np.unpackbits(np.ascontiguousarray(a).view(np.uint8), bitorder="little")[:vocab]
        bits = bits.view(np.bool_)
    else:
        raise ValueError("the allowed-token mask must be a bool array or an int32/uint32 bitmask, "
                         f"got dtype {a.dtype}")
    if bits.size < vocab:
        bits = np.concatenate([bits, np.zeros(vocab - bits.size, np.bool_)])
    if not bits.any():
        raise ValueError("the allowed-token mask allows no token")
    return bits


def _softmax(v: np.ndarray) -> np.ndarray:
    """float64 probabilities; the exponentials are taken in float32 (numpy's float64 exp is
    ~20x slower on a 201088-entry vocabulary), relative error ~1e-7."""
    e = np.exp((v - v.max()).astype(np.float32)).astype(np.float64)
    return e / e.sum()


def _argmax(x: np.ndarray) -> int:
    return int(np.argmax(x))  # first (lowest) id among equal maxima


def _top_k_ids(x: np.ndarray, k: int) -> np.ndarray:
    """Ascending ids of exactly the k largest values; among values equal to the k-th, lower ids
    win."""
    kth = np.partition(x, x.size - k)[x.size - k]
    above = np.flatnonzero(x > kth)
    need = k - above.size
    if need > 0:
        ties = np.flatnonzero(x == kth)[:need]
        above = np.union1d(above, ties)
    return above


def _top_p_keep(pr: np.ndarray, top_p: float) -> Optional[np.ndarray]:
    """Ascending positions of the nucleus in `pr` (None when nothing is dropped).

    Only the most likely candidates are sorted: the m largest (m growing x8 until their mass
    reaches top_p) plus everything tied with the smallest of them. Tokens outside that set are
    less likely than all of it, so they come after it in the sorted order and cannot be in the
    nucleus once its mass reaches top_p."""
    n = pr.size
    m = min(n, 256)
    while True:
        if m >= n:
            cand = np.arange(n)
        else:
            t = np.partition(pr, n - m)[n - m]
            cand = np.flatnonzero(pr >= t)
        cp = pr[cand]
        if cand.size == n or cp.sum() >= top_p:
            break
        m *= 8
    order = cand[np.lexsort((cand, -cp))]  # probability descending, then id ascending
    before = np.cumsum(pr[order]) - pr[order]
    kept = order[before < top_p]
    if kept.size == n:
        return None
    return np.sort(kept)
