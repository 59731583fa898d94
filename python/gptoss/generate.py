"""Completions of token prompts, run by the model's continuous-batching engine (llm_engine.py).

`generate(model, prompt_tokens, sampling)` runs one completion; `generate_batch` several at once;
`GenerationStream` streams one token at a time. They are clients of the same engine loop the
server uses: requests share the model's steps and its prefix cache (a conversation's next turn
prefills only what changed), and the stop rules are the scheduler's (scheduler.py):

* the token is in ``sampling.stop_token_ids`` -> ``finish_reason="stop"`` (the id is the last
  entry of `tokens`, is never decoded into `text`, and is not fed back to the model);
* the decoded text contains a stop string -> ``"stop"`` (`text` ends right before it; the token
  that completed it is the last entry of `tokens`);
* ``max_tokens`` tokens were generated -> ``"length"``;
* the sequence fills ``model.max_context`` -> ``"context_length"``.

A prompt longer than the context raises `ContextOverflowError` (a `ValueError`). Text is produced
only when a tokenizer is given (needed for stop strings; see detokenizer.py).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

from .detokenizer import TextDecoder, token_bytes
from .request import FinishReason, Request, RequestOutput, Usage
from .sampling import Sample, SamplingParams

__all__ = [
    "Usage",
    "TokenChunk",
    "GenerationResult",
    "GenerationStream",
    "generate",
    "generate_batch",
    "TextDecoder",
    "token_bytes",
    "check_vocab",
    "engine_of",
]

FINISH_REASONS = tuple(str(r) for r in FinishReason)


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


# Engines of model-like objects without their own `engine` (test doubles).
_engines: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def engine_of(model: Any) -> Any:
    """The model's continuous-batching engine (`Model.engine`), made once per model."""
    eng = getattr(model, "engine", None)
    if eng is not None:
        return eng
    from .llm_engine import LLMEngine

    eng = _engines.get(model)
    if eng is None:
        eng = _engines[model] = LLMEngine(model)
    return eng


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


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
    far with ``finish_reason="cancelled"``. constraint: a `gptoss.structured.TokenConstraint`.
    """

    def __init__(self, model: Any, prompt: Sequence[int], params: SamplingParams, *,
                 tokenizer: Any = None, vocab_limit: Optional[int] = None, constraint: Any = None,
                 _stream: Any = None):
        self.model = model
        self.prompt = [int(t) for t in prompt]
        self.params = params
        self.result: Optional[GenerationResult] = None
        self._tokens: list[int] = []
        self._text: list[str] = []
        self._logprobs: Optional[list[Sample]] = [] if params.logprobs is not None else None
        self._stream = _stream if _stream is not None else engine_of(model).submit(
            Request(self.prompt, params, tokenizer=tokenizer, vocab_limit=vocab_limit, constraint=constraint))
        self._it = self._run()

    def __iter__(self) -> "GenerationStream":
        return self

    def __next__(self) -> TokenChunk:
        return next(self._it)

    def close(self) -> None:
        self._it.close()
        if self.result is None:
            self._finish(None)

    def _run(self) -> Iterator[TokenChunk]:
        out: Optional[RequestOutput] = None
        try:
            for out in self._stream:
                self._tokens += out.tokens
                self._text.append(out.text)
                if self._logprobs is not None and out.logprobs:
                    self._logprobs += out.logprobs
                last = len(out.tokens) - 1
                for j, t in enumerate(out.tokens):  # forced tokens come several at a time
                    s = out.logprobs[j] if out.logprobs else None
                    yield TokenChunk(t, out.text if j == last else "", s.logprob if s else None,
                                     s.top_logprobs if s else None)
                if out.finished and not out.tokens and out.text:
                    yield TokenChunk(self._tokens[-1] if self._tokens else -1, out.text)
        finally:
            self._finish(out if out is not None and out.finished else None)

    def _finish(self, out: Optional[RequestOutput]) -> None:
        if self.result is not None:
            return
        if out is None:  # closed early: cancel, and wait (one step at most) until it has ended
            self._stream.cancel()
            for out in self._stream:
                self._tokens += out.tokens
                self._text.append(out.text)
        if out is not None and out.error is not None:
            raise out.error
        usage = out.usage if out is not None and out.usage is not None else \
            Usage(len(self.prompt), len(self._tokens), 0)
        self.result = GenerationResult(
            tokens=list(self._tokens), text="".join(self._text),
            finish_reason=str(out.finish_reason) if out is not None else "cancelled",
            usage=usage, stop_reason=out.stop_reason if out is not None else None, logprobs=self._logprobs)


def generate(model: Any, prompt_tokens: Sequence[int], sampling: Optional[SamplingParams] = None,
             *, stream: bool = False, tokenizer: Any = None, vocab_limit: Optional[int] = None,
             constraint: Any = None, **kwargs: Any):
    """Complete `prompt_tokens`.

    sampling: a `SamplingParams`; keyword arguments (``temperature=0.7, max_tokens=64, ...``)
        override its fields (unknown names raise `ValueError`).
    stream: False -> return a `GenerationResult`; True -> return a `GenerationStream` yielding
        one `TokenChunk` per generated token (its ``.result`` is set when it ends).
    tokenizer: decodes the generated tokens into `text` (required for stop strings).
    vocab_limit: never sample ids >= this (default: the model's vocabulary).
    constraint: a `gptoss.structured.TokenConstraint` the reply must follow.
    """
    gen = GenerationStream(model, prompt_tokens, SamplingParams.merged(sampling, **kwargs), tokenizer=tokenizer,
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
    """Complete several prompts together (the engine batches them step by step). Prompt ``i`` is
    sampled with seed ``seed + i`` (when a seed is set), so the results do not depend on batching
    order. Every argument is checked before any prompt runs."""
    base = SamplingParams.merged(sampling, **kwargs)
    if not prompts:
        return []
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"empty prompt at index {i}: at least one token is needed")
    eng = engine_of(model)
    reqs = [Request([int(t) for t in p], base.for_index(i),
                    tokenizer=tokenizer, vocab_limit=vocab_limit) for i, p in enumerate(prompts)]
    streams = eng.submit_many(reqs)  # every request checked before any runs; they start together
    gens = [GenerationStream(model, r.prompt, r.sampling, _stream=st) for r, st in zip(reqs, streams)]
    out = []
    for g in gens:
        for _ in g:
            pass
        out.append(g.result)
    return out
