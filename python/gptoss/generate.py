"""The generation loop: prefill, sample, decode, stop.

`generate(model, prompt_tokens, sampling)` runs one completion on any object with the engine's
interface (`Model.new_sequence()`, `Sequence.prefill/decode/truncate/free/tokens`,
`model.max_context`). A `Session` keeps one sequence alive between calls and reuses its KV cache
for the longest common token prefix, so a conversation only prefills what changed.

Stopping, checked after every sampled token, in this order:

* the token is in ``sampling.stop_token_ids`` -> ``finish_reason="stop"`` (the id is the last
  entry of `tokens`, is never decoded into `text`, and is not fed back to the model);
* the decoded text contains a stop string -> ``"stop"`` (`text` ends right before it; the token
  that completed it is the last entry of `tokens`);
* ``max_tokens`` tokens were generated -> ``"length"``;
* the sequence fills ``model.max_context`` (the next decode would overflow) ->
  ``"context_length"``.

A prompt longer than the context raises the model's `ContextOverflowError` (a `ValueError`).

Text is produced only when a tokenizer is given (needed for stop strings): token bytes go through
an incremental UTF-8 decoder, so a character split across tokens is released whole, and text
that might be the start of a stop string is held back until it is known not to be one.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any, Generator, Optional, Sequence

import numpy as np

from .sampling import Sample, Sampler, SamplingParams

__all__ = [
    "Usage",
    "TokenChunk",
    "GenerationResult",
    "GenerationStream",
    "Session",
    "generate",
    "generate_batch",
    "TextDecoder",
    "check_vocab",
]

FINISH_REASONS = ("stop", "length", "context_length", "cancelled")


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV cache was reused, not recomputed

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.prompt_tokens + other.prompt_tokens,
                     self.completion_tokens + other.completion_tokens,
                     self.cached_tokens + other.cached_tokens)


@dataclass
class TokenChunk:
    """One generated token, streamed. `text` is the text released by this token (may be empty
    while bytes of a character or a possible stop-string prefix are held back)."""

    token: int
    text: str = ""
    logprob: Optional[float] = None
    top_logprobs: Optional[list[tuple[int, float]]] = None


@dataclass
class GenerationResult:
    tokens: list[int]
    text: str
    finish_reason: str  # one of FINISH_REASONS
    usage: Usage
    stop_reason: Any = None  # the stop token id or stop string that ended generation
    logprobs: Optional[list[Sample]] = None


# ---------------------------------------------------------------------------- text decoding
def token_bytes(tokenizer: Any, token: int) -> bytes:
    """Raw bytes of one token, for a tiktoken-like tokenizer or one with only `decode`."""
    enc = getattr(tokenizer, "encoding", None)
    for obj in (tokenizer, enc):
        fn = getattr(obj, "decode_single_token_bytes", None)
        if fn is not None:
            try:
                return bytes(fn(token))
            except (KeyError, ValueError, IndexError):
                return b""
    for obj in (tokenizer, enc):
        fn = getattr(obj, "decode_bytes", None)
        if fn is not None:
            try:
                return bytes(fn([token]))
            except (KeyError, ValueError, IndexError):
                return b""
    try:
        return str(tokenizer.decode([token])).encode("utf-8")
    except (KeyError, ValueError, IndexError):
        return b""


class TextDecoder:
    """Incremental detokenizer with stop-string detection and hold-back."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.full = ""  # all decoded text so far
        self.released = 0  # len of the prefix of `full` already handed out
        self._checked = 0  # `full[:_checked]` was already searched for stop strings
        self.stopped: Optional[str] = None  # the stop string found
        self.end: Optional[int] = None  # where the text ends when a stop string was found

    def push(self, token: int) -> str:
        """Add one token; return the newly released text."""
        if self.stopped is not None:
            return ""
        self.full += self._utf8.decode(token_bytes(self.tokenizer, token))
        return self._release()

    def flush(self) -> str:
        """End of generation: release everything held back (incomplete bytes become U+FFFD)."""
        if self.stopped is None:
            self.full += self._utf8.decode(b"", final=True)
            out = self.full[self.released:]
            self.released = len(self.full)
            return out
        return ""

    @property
    def text(self) -> str:
        return self.full[: self.end] if self.end is not None else self.full

    def _release(self) -> str:
        if self.stop:
            longest = max(len(s) for s in self.stop)
            start = max(0, self._checked - longest + 1)
            best: Optional[tuple[int, str]] = None
            for s in self.stop:
                i = self.full.find(s, start)
                if i >= 0 and (best is None or i < best[0]):
                    best = (i, s)
            self._checked = len(self.full)
            if best is not None:
                self.end, self.stopped = best
                out = self.full[self.released: self.end]
                self.released = self.end
                return out
            hold = 0
            for s in self.stop:
                for k in range(min(len(s) - 1, len(self.full)), hold, -1):
                    if self.full.endswith(s[:k]):
                        hold = k
                        break
            upto = len(self.full) - hold
        else:
            upto = len(self.full)
        out = self.full[self.released: upto]
        self.released = max(self.released, upto)
        return out


# ---------------------------------------------------------------------------- session
def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Session:
    """One live sequence whose KV cache is reused across prompts that share a token prefix.

    `prefill(tokens)` keeps the longest common prefix of the cached tokens and `tokens`
    (rewinding with `Sequence.truncate`), prefills only the rest, and falls back to a fresh
    sequence when the cache cannot be rewound. At least one token is always recomputed, since
    the logits after the last prompt token are needed.
    """

    def __init__(self, model: Any):
        self.model = model
        self.seq: Any = None

    @property
    def tokens(self) -> list[int]:
        return list(self.seq.tokens) if self.seq is not None else []

    def __len__(self) -> int:
        return len(self.seq) if self.seq is not None else 0

    def prefill(self, tokens: Sequence[int]) -> tuple[np.ndarray, int]:
        """Make the cache hold exactly `tokens`; return (logits after the last one, reused count)."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("empty prompt: at least one token is needed")
        reused = self._rewind(tokens)
        try:
            logits = self.seq.prefill(tokens[reused:])
        except BaseException:
            self.free()
            raise
        return logits, reused

    def _rewind(self, tokens: list[int]) -> int:
        """Keep the longest reusable prefix of `tokens` in the cache (a fresh sequence if none);
        returns its length."""
        reused = 0
        if self.seq is not None:
            have = list(self.seq.tokens)
            n = min(common_prefix(have, tokens), len(tokens) - 1)
            if n > 0 and (n == len(have) or self.seq.truncate(n)):
                reused = n
            else:
                self.free()
        if self.seq is None:
            self.seq = self.model.new_sequence()
        return reused

    def decode(self, token: int) -> np.ndarray:
        if self.seq is None:
            raise RuntimeError("decode before prefill")
        try:
            return self.seq.decode(int(token))
        except BaseException:
            self.free()
            raise

    # Sampling on the device (models with `samples_on_device`): only the token id comes back.
    def prefill_sample(self, tokens: Sequence[int], params: dict) -> tuple[Sample, int]:
        """`prefill`, then the next token drawn on the device with `params`; (sample, reused)."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("empty prompt: at least one token is needed")
        reused = self._rewind(tokens)
        try:
            sample = self.model.step_sample([(self.seq, tokens[reused:])], [params])[0]
        except BaseException:
            self.free()
            raise
        return sample, reused

    def decode_sample(self, token: int, params: dict) -> Sample:
        if self.seq is None:
            raise RuntimeError("decode before prefill")
        try:
            return self.model.step_sample([(self.seq, [int(token)])], [params])[0]
        except BaseException:
            self.free()
            raise

    def free(self) -> None:
        if self.seq is not None:
            seq, self.seq = self.seq, None
            try:
                seq.free()
            except Exception:  # freeing is best-effort
                pass

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()


def model_vocab_size(model: Any) -> Optional[int]:
    cfg = getattr(model, "config", None)
    v = getattr(cfg, "vocab_size", None)
    return int(v) if v is not None else None


def model_max_context(model: Any) -> Optional[int]:
    v = getattr(model, "max_context", None)
    if v is None:
        v = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(v) if v is not None else None


def check_vocab(model: Any, tokens: Sequence[int], tokenizer: Any = None) -> None:
    """Raise a `ValueError` that explains a tokenizer/model vocabulary mismatch when `tokens`
    (encoded by the o200k_harmony tokenizer) use ids the model does not have."""
    vocab = model_vocab_size(model)
    if vocab is None or not tokens:
        return
    top = max(tokens)
    if top >= vocab:
        n = getattr(tokenizer, "n_vocab", None) or 201088
        raise ValueError(
            f"the prompt uses token id {top} but the model's vocabulary has only {vocab} ids: "
            f"the model does not match the o200k_harmony tokenizer ({n} ids). A synthetic "
            "checkpoint used with the tokenizer needs the full vocabulary "
            f"(gptoss synthetic ... --vocab {n}).")


# ---------------------------------------------------------------------------- generation
class GenerationStream:
    """Iterator of `TokenChunk`s; `result` holds the `GenerationResult` once it is exhausted.

    Closing it early (``close()``) ends generation; `result` then reports what was generated so
    far with ``finish_reason="cancelled"``.
    """

    def __init__(self, model: Any, prompt: Sequence[int], params: SamplingParams, *,
                 tokenizer: Any = None, session: Optional[Session] = None,
                 vocab_limit: Optional[int] = None, constraint: Any = None):
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("empty prompt: at least one token is needed")
        if params.stop and tokenizer is None:
            raise ValueError("stop strings need a tokenizer to decode the generated text")
        self.model = model
        self.prompt = prompt
        self.params = params
        self.sampler = Sampler(params, vocab_limit=vocab_limit)
        self.decoder = TextDecoder(tokenizer, tuple(params.stop or ())) if tokenizer is not None else None
        self._own_session = session is None
        self.session = session if session is not None else Session(model)
        self.constraint = constraint  # a gptoss.structured.TokenConstraint, or None
        self.result: Optional[GenerationResult] = None
        self._it = self._run()

    def __iter__(self) -> "GenerationStream":
        return self

    def __next__(self) -> TokenChunk:
        return next(self._it)

    def close(self) -> None:
        self._it.close()

    def _run(self) -> Generator[TokenChunk, None, None]:
        p = self.params
        tokens: list[int] = []
        logprobs: Optional[list[Sample]] = [] if p.logprobs is not None else None
        usage = Usage(prompt_tokens=len(self.prompt))
        finish: str = "cancelled"
        stop_reason: Any = None
        max_ctx = model_max_context(self.model)
        stops = set(p.stop_token_ids)
        # Draw on the device when it can (up to 20 logprobs): same random stream, only token ids
        # (and requested logprobs) cross to the host; penalties and bias go as sparse edits.
        # A constraint's masks are applied by the host sampler.
        guide = None
        if self.constraint is not None:
            from .structured.driver import Guide
            guide = Guide.for_model(self.constraint, self.model)
        on_device = getattr(self.model, "samples_on_device", False) and self.sampler.device_params_ok \
            and guide is None
        try:
            if on_device:
                tok, usage.cached_tokens = self.session.prefill_sample(
                    self.prompt, self.sampler.device_params(tokens, self.prompt))
            elif guide is not None:
                logits, usage.cached_tokens = guide.prefill(self.session, self.prompt)
            else:
                logits, usage.cached_tokens = self.session.prefill(self.prompt)
            while True:
                if guide is not None:
                    s = guide.sample(self.sampler, logits, tokens, self.prompt)
                else:
                    s = tok if on_device else self.sampler.sample(logits, tokens, self.prompt)
                tokens.append(s.token)
                usage.completion_tokens = len(tokens)
                if logprobs is not None:
                    logprobs.append(s)
                if s.token in stops:
                    finish, stop_reason = "stop", s.token
                    text = self.decoder.flush() if self.decoder else ""
                    yield TokenChunk(s.token, text, s.logprob, s.top_logprobs)
                    break
                text = self.decoder.push(s.token) if self.decoder else ""
                if self.decoder is not None and self.decoder.stopped is not None:
                    finish, stop_reason = "stop", self.decoder.stopped
                    yield TokenChunk(s.token, text, s.logprob, s.top_logprobs)
                    break
                if p.max_tokens is not None and len(tokens) >= p.max_tokens:
                    finish = "length"
                elif max_ctx is not None and len(self.session) + 1 > max_ctx:
                    finish = "context_length"
                if finish != "cancelled":
                    if self.decoder:
                        text += self.decoder.flush()
                    yield TokenChunk(s.token, text, s.logprob, s.top_logprobs)
                    break
                yield TokenChunk(s.token, text, s.logprob, s.top_logprobs)
                if on_device:
                    tok = self.session.decode_sample(s.token, self.sampler.device_params(tokens, self.prompt))
                elif guide is not None:
                    logits = guide.decode(self.session, s.token)
                else:
                    logits = self.session.decode(s.token)
        finally:
            self.result = GenerationResult(
                tokens=tokens,
                text=self.decoder.text if self.decoder else "",
                finish_reason=finish,
                usage=usage,
                stop_reason=stop_reason,
                logprobs=logprobs,
            )
            if self._own_session:
                self.session.free()


def generate(model: Any, prompt_tokens: Sequence[int], sampling: Optional[SamplingParams] = None,
             *, stream: bool = False, tokenizer: Any = None, session: Optional[Session] = None,
             vocab_limit: Optional[int] = None, constraint: Any = None, **kwargs: Any):
    """Complete `prompt_tokens`.

    sampling: a `SamplingParams`; keyword arguments (``temperature=0.7, max_tokens=64, ...``)
        override its fields (unknown names raise `ValueError`).
    stream: False -> return a `GenerationResult`; True -> return a `GenerationStream` yielding
        one `TokenChunk` per generated token (its ``.result`` is set when it ends).
    tokenizer: decodes the generated tokens into `text` (required for stop strings).
    session: reuse this `Session`'s sequence (and its KV cache prefix); by default a fresh
        sequence is made and freed at the end.
    vocab_limit: never sample ids >= this (default: the model's vocabulary).
    constraint: a `gptoss.structured.TokenConstraint` that every token must satisfy (its masks are
        applied by the host sampler; the tokens it forces are taken as they are).
    """
    params = SamplingParams.from_kwargs(sampling, **kwargs) if (kwargs or sampling is None) \
        else sampling
    gen = GenerationStream(model, prompt_tokens, params, tokenizer=tokenizer, session=session,
                           vocab_limit=vocab_limit, constraint=constraint)
    if stream:
        return gen
    for _ in gen:
        pass
    assert gen.result is not None
    return gen.result


def generate_batch(model: Any, prompts: Sequence[Sequence[int]],
                   sampling: Optional[SamplingParams] = None, *, tokenizer: Any = None,
                   vocab_limit: Optional[int] = None, **kwargs: Any) -> list[GenerationResult]:
    """Complete several prompts together, advancing all live sequences with one `model.step`
    call per token. Prompt ``i`` is sampled with seed ``seed + i`` (when a seed is set), so the
    results do not depend on batching order. Stopping rules are the same as `generate`."""
    base = SamplingParams.from_kwargs(sampling, **kwargs) if (kwargs or sampling is None) \
        else sampling
    if not prompts:
        return []
    if base.stop and tokenizer is None:
        raise ValueError("stop strings need a tokenizer to decode the generated text")
    prompts = [[int(t) for t in p] for p in prompts]
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"empty prompt at index {i}: at least one token is needed")
    max_ctx = model_max_context(model)
    n = len(prompts)
    samplers = []
    for i in range(n):
        pi = base if base.seed is None else SamplingParams.from_kwargs(base, seed=base.seed + i)
        samplers.append(Sampler(pi, vocab_limit=vocab_limit))
    decoders = [TextDecoder(tokenizer, tuple(base.stop or ())) if tokenizer is not None else None
                for _ in range(n)]
    out: list[list[int]] = [[] for _ in range(n)]
    lps: list[Optional[list[Sample]]] = [[] if base.logprobs is not None else None
                                         for _ in range(n)]
    finish: list[Optional[str]] = [None] * n
    why: list[Any] = [None] * n
    stops = set(base.stop_token_ids)
    seqs = [model.new_sequence() for _ in range(n)]
    on_device = getattr(model, "samples_on_device", False) and samplers[0].device_params_ok

    def advance(live: list[int], feeds: list[list[int]]) -> list:
        pairs = [(seqs[i], f) for i, f in zip(live, feeds)]
        if on_device:
            return model.step_sample(pairs, [samplers[i].device_params(out[i], prompts[i]) for i in live])
        return model.step(pairs)

    try:
        nxt = advance(list(range(n)), prompts)
        live = list(range(n))
        while live:
            feed = []
            for j, i in enumerate(live):
                s = nxt[j] if on_device else samplers[i].sample(nxt[j], out[i], prompts[i])
                out[i].append(s.token)
                if lps[i] is not None:
                    lps[i].append(s)  # type: ignore[union-attr]
                dec = decoders[i]
                if s.token in stops:
                    finish[i], why[i] = "stop", s.token
                    continue
                if dec is not None:
                    dec.push(s.token)
                    if dec.stopped is not None:
                        finish[i], why[i] = "stop", dec.stopped
                        continue
                if base.max_tokens is not None and len(out[i]) >= base.max_tokens:
                    finish[i] = "length"
                elif max_ctx is not None and len(prompts[i]) + len(out[i]) > max_ctx:
                    finish[i] = "context_length"
                else:
                    feed.append(i)
            live = feed
            if live:
                nxt = advance(live, [[out[i][-1]] for i in live])
    finally:
        for s in seqs:
            try:
                s.free()
            except Exception:
                pass
    results = []
    for i in range(n):
        dec = decoders[i]
        if dec is not None:
            dec.flush()
        results.append(GenerationResult(
            tokens=out[i], text=dec.text if dec else "", finish_reason=finish[i] or "length",
            usage=Usage(len(prompts[i]), len(out[i]), 0), stop_reason=why[i], logprobs=lps[i]))
    return results
