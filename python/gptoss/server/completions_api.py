"""``POST /v1/completions``: raw text in, raw text out (no harmony), for evaluation harnesses."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator

from ..sampling import COMPLETION_STOP_TOKEN_IDS
from .errors import invalid
from .generation import Generation, interleaved
from .params import Body, sampling_params

if TYPE_CHECKING:
    from .app import ServerContext

__all__ = ["completions"]

IGNORED = ("user", "metadata", "store", "service_tier", "safety_identifier")
UNSUPPORTED = {"suffix": "no fill-in-the-middle", "best_of": "use n"}
# Raw text stops at <|endoftext|> as well as harmony's end-of-turn tokens.


def _prompts(ctx: ServerContext, v: Any) -> list[list[int]]:
    """`prompt`: a string, an array of strings, an array of token ids, or an array of those."""
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise invalid("prompt", "'prompt' must be a string, an array of strings or an array of token ids")
    if all(isinstance(t, int) and not isinstance(t, bool) for t in v):
        v = [v]
    out = []
    for i, p in enumerate(v):
        if isinstance(p, str):
            ids = ctx.tokenizer.encode(p)
        elif isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            ids = list(p)
            bad = [t for t in ids if not 0 <= t < ctx.vocab_limit]
            if bad:
                raise invalid(f"prompt[{i}]", f"token id {bad[0]} is out of range [0, {ctx.vocab_limit})")
        else:
            raise invalid(f"prompt[{i}]", "each prompt must be a string or an array of token ids")
        if not ids:
            raise invalid(f"prompt[{i}]", "the prompt is empty")
        ctx.check_prompt(ids)
        out.append(ids)
    return out


class CompletionRequest:
    def __init__(self, ctx: ServerContext, data: Any):
        body = Body(data, ignored=IGNORED, unsupported=UNSUPPORTED)
        ctx.check_model(body.take_str("model", required=True))
        self.prompts = _prompts(ctx, body.raw("prompt"))
        max_tokens = body.take_int("max_tokens", 1)
        self.n = body.take_int("n", 1, 16) or 1
        self.echo = body.take_bool("echo")
        self.logprobs = body.take_int("logprobs", 0, 20)
        self.stream = body.take_bool("stream")
        opts = body.take_dict("stream_options")
        if opts is not None and not self.stream:
            raise invalid("stream_options", "'stream_options' is only allowed with 'stream': true")
        self.include_usage = bool((opts or {}).get("include_usage", False))
        self.params = sampling_params(body, max_tokens=16 if max_tokens is None else max_tokens,
                                      stop_token_ids=COMPLETION_STOP_TOKEN_IDS, logprobs=self.logprobs,
                                      tokenizer_vocab=ctx.vocab_limit)
        body.done()
        self.id = "cmpl-" + uuid.uuid4().hex
        self.created = int(time.time())


def _logprobs(ctx: ServerContext, outs: list, offset0: int) -> dict:
    tok = ctx.tokenizer
    tokens, lps, tops, offs = [], [], [], []
    off = offset0
    for t, s in outs:
        text = tok.decode([t])
        tokens.append(text)
        lps.append(s.logprob)
        tops.append({tok.decode([i]): v for i, v in (s.top_logprobs or [])})
        offs.append(off)
        off += len(text)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs}


async def completions(ctx: ServerContext, data: Any, disconnected: Any) -> Any:
    req = await asyncio.to_thread(CompletionRequest, ctx, data)  # rendering and grammars: off the event loop
    gens = [Generation(ctx, p, req.params.for_index(k), harmony=False)
            for p in req.prompts for k in range(req.n)]
    if req.stream:
        return _stream(ctx, req, gens)
    try:
        return await disconnected(_whole(ctx, req, gens))
    finally:
        for g in gens:
            g.cancel()


def _usage(gens: list) -> dict:
    prompt = sum(len(g.prompt) for g in gens)
    completion = sum(g.last.usage.completion_tokens for g in gens if g.last is not None and g.last.usage)
    cached = sum(g.last.usage.cached_tokens for g in gens if g.last is not None and g.last.usage)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


async def _whole(ctx: ServerContext, req: CompletionRequest, gens: list) -> dict:
    async def one(g: Generation) -> dict:
        text, pairs = [], []
        async for ch in g.chunks():
            out = ch.output
            text.append(out.text)
            if out.logprobs is not None:
                pairs += zip(out.tokens, out.logprobs)
        g.raise_if_failed()
        head = ctx.tokenizer.decode(g.prompt) if req.echo else ""
        return {"text": head + "".join(text), "finish_reason": g.finish_reason,
                "logprobs": _logprobs(ctx, pairs, len(head)) if req.logprobs is not None else None}

    choices = await asyncio.gather(*(one(g) for g in gens))
    return {"id": req.id, "object": "text_completion", "created": req.created, "model": ctx.name,
            "system_fingerprint": ctx.fingerprint,
            "choices": [dict(index=i, **c) for i, c in enumerate(choices)], "usage": _usage(gens)}


async def _stream(ctx: ServerContext, req: CompletionRequest, gens: list) -> AsyncIterator[dict]:
    def chunk(i: int, text: str, finish: Any = None, logprobs: Any = None) -> dict:
        return {"id": req.id, "object": "text_completion", "created": req.created, "model": ctx.name,
                "choices": [{"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish}]}

    try:
        if req.echo:
            for i, g in enumerate(gens):
                yield chunk(i, ctx.tokenizer.decode(g.prompt))
        async for i, ch in interleaved(gens):
            g = gens[i]
            if ch is None:
                g.raise_if_failed()
                yield chunk(i, "", g.finish_reason)
                continue
            out = ch.output
            lp = (_logprobs(ctx, list(zip(out.tokens, out.logprobs)), 0)
                  if req.logprobs is not None and out.logprobs else None)
            if out.text or lp is not None:
                yield chunk(i, out.text, logprobs=lp)
        if req.include_usage:
            yield {"id": req.id, "object": "text_completion", "created": req.created, "model": ctx.name,
                   "choices": [], "usage": _usage(gens)}
    finally:  # the client may go before the first chunk
        for g in gens:
            g.cancel()
