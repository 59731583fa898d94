"""``POST /v1/chat/completions``: harmony chat for OpenAI clients, streamed (SSE) or not.

The reply's analysis channel is both ``reasoning`` and ``reasoning_content`` (clients read
either); calls to ``functions.*`` are ``tool_calls`` (streamed: id and name first, then argument
fragments); anything else the model writes for the user is ``content``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional

from ..reply import ContentDelta, ReasoningDelta, ToolCallBegin, ToolCallDelta
from .conversation import chat_messages, function_tools, render_prompt
from .errors import invalid
from .generation import Generation, interleaved
from .params import REASONING_EFFORTS, Body, sampling_params

if TYPE_CHECKING:
    from .app import ServerContext

__all__ = ["chat_completions"]

IGNORED = ("user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
           "prompt_cache_retention")
UNSUPPORTED = {
    "functions": "use 'tools'", "function_call": "use 'tool_choice'",
    "audio": "text only", "modalities": "text only", "prediction": "no predicted outputs",
    "web_search_options": "no built-in web search on this endpoint",
}


def _effort(body: Body, default: str) -> str:
    e = body.take_str("reasoning_effort", choices=("minimal",) + REASONING_EFFORTS)
    return "low" if e == "minimal" else (e or default)


def _token_logprob(tokenizer: Any, tok: int, lp: float) -> dict:
    b = tokenizer.decode_bytes([tok])
    return {"token": b.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(b)}


def _logprobs(tokenizer: Any, pairs: list, top: int) -> list:
    out = []
    for tok, s in pairs:
        d = _token_logprob(tokenizer, tok, s.logprob)
        d["top_logprobs"] = [_token_logprob(tokenizer, t, v) for t, v in (s.top_logprobs or [])[:top]]
        out.append(d)
    return out


class ChatRequest:
    def __init__(self, ctx: ServerContext, data: Any):
        body = Body(data, ignored=IGNORED, unsupported=UNSUPPORTED)
        ctx.check_model(body.take_str("model", required=True))
        messages = chat_messages(body.take_list("messages", required=True))
        raw_tools = [t for t in body.take_list("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
        tools = function_tools(body.raw("tools"))
        tool_choice = body.raw("tool_choice")
        response_format = body.take_dict("response_format")
        budget = body.take_int("thinking_token_budget", 0)
        body.take_bool("parallel_tool_calls", True)  # harmony emits one call per <|call|>: always true
        effort = _effort(body, ctx.reasoning_effort)
        max_tokens = body.take_int("max_completion_tokens", 1)
        legacy = body.take_int("max_tokens", 1)
        self.n = body.take_int("n", 1, 16) or 1
        self.logprobs = body.take_bool("logprobs")
        self.top_logprobs = body.take_int("top_logprobs", 0, 20)
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true")
        self.stream = body.take_bool("stream")
        opts = body.take_dict("stream_options")
        if opts is not None and not self.stream:
            raise invalid("stream_options", "'stream_options' is only allowed with 'stream': true")
        self.include_usage = bool((opts or {}).get("include_usage", False))
        self.params = sampling_params(body, max_tokens=max_tokens or legacy,
                                      stop_token_ids=ctx.tokenizer.stop_tokens_for_assistant_actions,
                                      logprobs=(self.top_logprobs or 0) if self.logprobs else None,
                                      tokenizer_vocab=ctx.vocab_limit)
        body.done()
        p = render_prompt(messages, ctx.tokenizer, reasoning_effort=effort, tools=tools, raw_tools=raw_tools,
                          response_format=response_format, tool_choice=tool_choice, thinking_token_budget=budget,
                          harmony_constraint=ctx.harmony_constraint)
        self.prompt, self.constraint = p.tokens, p.constraint
        ctx.check_prompt(self.prompt)
        self.id = "chatcmpl-" + uuid.uuid4().hex
        self.created = int(time.time())


def _usage(gens: list[Generation]) -> dict:
    outs = [g.last for g in gens if g.last is not None and g.last.usage is not None]
    prompt = outs[0].usage.prompt_tokens if outs else 0
    completion = sum(o.usage.completion_tokens for o in outs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": max((o.usage.cached_tokens for o in outs), default=0)},
            "completion_tokens_details": {"reasoning_tokens": sum(g.reply.reasoning_tokens for g in gens)}}


async def chat_completions(ctx: ServerContext, data: Any, disconnected: Any) -> Any:
    """The JSON response (a dict) or, for ``stream``, an async iterator of SSE chunks (dicts)."""
    req = await asyncio.to_thread(ChatRequest, ctx, data)  # rendering and grammars: off the event loop
    gens = [Generation(ctx, req.prompt, req.params.for_index(i), constraint=req.constraint()) for i in range(req.n)]
    if req.stream:
        return _stream(ctx, req, gens)
    try:
        return await _whole(ctx, req, gens, disconnected)
    finally:
        for g in gens:
            g.cancel()  # a no-op once finished; stops generation when the client went away


async def _whole(ctx: ServerContext, req: ChatRequest, gens: list[Generation], disconnected: Any) -> dict:
    async def one(g: Generation) -> dict:
        content: list[str] = []
        reasoning: list[str] = []
        lps: list = []
        async for ch in g.chunks():
            lps += ch.logprobs
            for ev in ch.events:
                if isinstance(ev, ContentDelta):
                    content.append(ev.text)
                elif isinstance(ev, ReasoningDelta):
                    reasoning.append(ev.text)
        g.raise_if_failed()
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(content) if content or not g.reply.tool_calls
                               else None}
        if reasoning:
            msg["reasoning"] = msg["reasoning_content"] = "".join(reasoning)
        if g.reply.tool_calls:
            msg["tool_calls"] = [{"id": c.call_id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}} for c in g.reply.tool_calls]
        return {"message": msg, "finish_reason": g.finish_reason,
                "logprobs": {"content": _logprobs(ctx.tokenizer, lps, req.top_logprobs or 0)} if req.logprobs else None}

    choices = await disconnected(asyncio.gather(*(one(g) for g in gens)))
    return {"id": req.id, "object": "chat.completion", "created": req.created, "model": ctx.name,
            "system_fingerprint": ctx.fingerprint,
            "choices": [dict(index=i, **c) for i, c in enumerate(choices)], "usage": _usage(gens)}


async def _stream(ctx: ServerContext, req: ChatRequest, gens: list[Generation]) -> AsyncIterator[dict]:
    def chunk(i: int, delta: dict, finish: Optional[str] = None, logprobs: Any = None) -> dict:
        return {"id": req.id, "object": "chat.completion.chunk", "created": req.created, "model": ctx.name,
                "system_fingerprint": ctx.fingerprint,
                "choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}

    try:
        for i in range(len(gens)):
            yield chunk(i, {"role": "assistant", "content": ""})
        async for i, ch in interleaved(gens):
            g = gens[i]
            if ch is None:
                g.raise_if_failed()
                yield chunk(i, {}, g.finish_reason)
                continue
            lp = ({"content": _logprobs(ctx.tokenizer, ch.logprobs, req.top_logprobs or 0)}
                  if req.logprobs and ch.logprobs else None)
            deltas = []
            for ev in ch.events:
                if isinstance(ev, ReasoningDelta):
                    deltas.append({"reasoning": ev.text, "reasoning_content": ev.text})
                elif isinstance(ev, ContentDelta):
                    deltas.append({"content": ev.text})
                elif isinstance(ev, ToolCallBegin):
                    deltas.append({"tool_calls": [{"index": ev.index, "id": ev.call_id, "type": "function",
                                                   "function": {"name": ev.name, "arguments": ""}}]})
                elif isinstance(ev, ToolCallDelta):
                    deltas.append({"tool_calls": [{"index": ev.index, "function": {"arguments": ev.text}}]})
                # ToolCall: its pieces went out already
            for j, d in enumerate(deltas):
                yield chunk(i, d, logprobs=lp if j == 0 else None)
            if not deltas and lp is not None:
                yield chunk(i, {}, logprobs=lp)
        if req.include_usage:
            yield {"id": req.id, "object": "chat.completion.chunk", "created": req.created, "model": ctx.name,
                   "system_fingerprint": ctx.fingerprint, "choices": [], "usage": _usage(gens)}
    finally:  # the client may go before the first chunk
        for g in gens:
            g.cancel()
