"""``POST /v1/responses`` and ``GET /v1/responses/{id}``: the Responses API (Codex, the Agents SDK).

The reply becomes output items in the order the model wrote them: ``reasoning`` (the analysis
channel), ``message`` (text for the user) and ``function_call``. Streamed, the events come in the
order the openai SDK's stream helper requires: ``response.created``, ``response.in_progress``,
then for every item ``output_item.added``, its content part or argument deltas, ``output_item.done``,
and last ``response.completed`` (or ``response.incomplete`` / ``response.failed`` with the reason).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, AsyncIterator, Optional

from ..reply import ContentDelta, ReasoningDelta, ToolCall, ToolCallBegin, ToolCallDelta
from .conversation import function_tools, render_prompt
from .errors import APIError, invalid
from .generation import Generation
from .params import REASONING_EFFORTS, Body, sampling_params
from .responses_input import input_messages, output_as_input

log = logging.getLogger("gptoss.server")

__all__ = ["responses", "get_response"]

IGNORED = ("user", "metadata", "service_tier", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
           "truncation", "max_tool_calls")
UNSUPPORTED = {"background": "responses run in the foreground", "conversation": "use previous_response_id",
               "prompt": "no stored prompts"}
# Tool types this server does not run yet: ignored (with a log line), never an error.
_OTHER_TOOLS = {"web_search", "web_search_preview", "code_interpreter", "local_shell", "file_search", "mcp",
                "computer_use_preview", "image_generation", "custom", "shell", "apply_patch"}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponsesRequest:
    def __init__(self, ctx: Any, data: Any):
        body = Body(data, ignored=IGNORED, unsupported=UNSUPPORTED)
        ctx.check_model(body.take_str("model", required=True))
        self.instructions = body.take_str("instructions")
        tools = body.take_list("tools") or []
        for i, t in enumerate(tools):
            kind = t.get("type") if isinstance(t, dict) else None
            if kind != "function":
                if kind not in _OTHER_TOOLS:
                    raise invalid(f"tools[{i}].type", f"unknown tool type {kind!r}")
                log.info("ignoring a %r tool: this server does not run it", kind)
        self.tools = [t for t in tools if isinstance(t, dict) and t.get("type") == "function"]
        declared = function_tools(self.tools)
        tc = body.raw("tool_choice")
        self.tool_choice = tc or "auto"
        self.parallel_tool_calls = body.take_bool("parallel_tool_calls", True)
        reasoning = body.take_dict("reasoning") or {}
        effort = reasoning.get("effort")
        if effort is not None and effort not in ("minimal",) + REASONING_EFFORTS:
            raise invalid("reasoning.effort", f"'reasoning.effort' must be one of low, medium, high, got {effort!r}")
        self.effort = "low" if effort == "minimal" else (effort or ctx.reasoning_effort)
        self.summary = reasoning.get("summary")
        self.text = body.take_dict("text") or {}
        fmt = self.text.get("format")
        if fmt is not None and not isinstance(fmt, dict):
            raise invalid("text.format", "'text.format' must be an object")
        budget = body.take_int("thinking_token_budget", 0)
        self.max_output_tokens = body.take_int("max_output_tokens", 1)
        self.store = body.take_bool("store", True)
        self.previous_response_id = body.take_str("previous_response_id")
        include = body.take_list("include") or []
        self.include_encrypted = "reasoning.encrypted_content" in include
        self.top_logprobs = body.take_int("top_logprobs", 0, 20)
        self.stream = body.take_bool("stream")
        body.take_dict("stream_options")
        self.params = sampling_params(body, max_tokens=self.max_output_tokens,
                                      stop_token_ids=ctx.tokenizer.stop_tokens_for_assistant_actions,
                                      tokenizer_vocab=ctx.vocab_limit)
        raw_input = body.raw("input")
        if raw_input is None:
            raise invalid("input", "'input' is required", code="missing_required_parameter")
        body.done()
        items = [{"type": "message", "role": "user", "content": raw_input}] if isinstance(raw_input, str) else raw_input
        if not isinstance(items, list):
            raise invalid("input", "'input' must be a string or an array of items")
        history: list = []
        if self.previous_response_id is not None:
            prev = ctx.store.get(self.previous_response_id)
            if prev is None:
                raise APIError(404, f"no stored response {self.previous_response_id!r}", param="previous_response_id",
                               code="previous_response_not_found")
            history = prev[1] + output_as_input(prev[0]["output"])
        self.input_items = history + items
        stored = {it["id"]: it for it in history if isinstance(it, dict) and "id" in it}
        messages = input_messages(self.input_items, ctx.store.unseal, stored.get)
        self.prompt, self.constraint = render_prompt(
            messages, ctx.tokenizer, reasoning_effort=self.effort, tools=declared, raw_tools=self.tools,
            instructions=self.instructions, response_format=fmt, tool_choice=tc, thinking_token_budget=budget,
            harmony_constraint=ctx.harmony_constraint, format_field="text.format")
        self.id = _new_id("resp")
        self.created = int(time.time())

    def response(self, ctx: Any, status: str, output: list, usage: Optional[dict] = None,
                 incomplete: Optional[str] = None, error: Optional[dict] = None) -> dict:
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status,
                "model": ctx.name, "output": output, "error": error,
                "incomplete_details": {"reason": incomplete} if incomplete else None,
                "instructions": self.instructions, "tools": self.tools, "tool_choice": self.tool_choice,
                "parallel_tool_calls": self.parallel_tool_calls,
                "reasoning": {"effort": self.effort, "summary": self.summary},
                "max_output_tokens": self.max_output_tokens, "previous_response_id": self.previous_response_id,
                "store": self.store, "temperature": self.params.temperature, "top_p": self.params.top_p,
                "text": {"format": self.text.get("format") or {"type": "text"}}, "truncation": "disabled",
                "metadata": {}, "usage": usage}


class _Items:
    """Output items built from reply events, with the stream events that announce them."""

    def __init__(self, req: ResponsesRequest, ctx: Any):
        self.req, self.ctx = req, ctx
        self.items: list[dict] = []
        self.open: Optional[dict] = None     # the item being written
        self.kind: Optional[str] = None

    def _start(self, item: dict) -> list[dict]:
        evs = self.close()
        self.items.append(item)
        self.open = item
        idx = len(self.items) - 1
        evs.append({"type": "response.output_item.added", "output_index": idx, "item": dict(item, status="in_progress")})
        if item["type"] in ("message", "reasoning"):
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []} if item["type"] == "message" \
                else {"type": "reasoning_text", "text": ""}
            evs.append({"type": "response.content_part.added", "item_id": item["id"], "output_index": idx,
                        "content_index": 0, "part": part})
        return evs

    def close(self) -> list[dict]:
        item, self.open = self.open, None
        if item is None:
            return []
        idx = len(self.items) - 1
        evs = []
        if item["type"] == "message":
            part = item["content"][0]
            evs.append({"type": "response.output_text.done", "item_id": item["id"], "output_index": idx,
                        "content_index": 0, "text": part["text"], "logprobs": []})
            evs.append({"type": "response.content_part.done", "item_id": item["id"], "output_index": idx,
                        "content_index": 0, "part": part})
        elif item["type"] == "reasoning":
            part = item["content"][0]
            evs.append({"type": "response.reasoning_text.done", "item_id": item["id"], "output_index": idx,
                        "content_index": 0, "text": part["text"]})
            evs.append({"type": "response.content_part.done", "item_id": item["id"], "output_index": idx,
                        "content_index": 0, "part": part})
            if self.req.include_encrypted:
                item["encrypted_content"] = self.ctx.store.seal(part["text"])
        elif item["type"] == "function_call":
            evs.append({"type": "response.function_call_arguments.done", "item_id": item["id"], "output_index": idx,
                        "name": item["name"], "arguments": item["arguments"]})
        item["status"] = "completed"
        evs.append({"type": "response.output_item.done", "output_index": idx, "item": item})
        return evs

    def feed(self, ev: Any) -> list[dict]:
        idx = len(self.items) - 1
        if isinstance(ev, ReasoningDelta):
            evs = []
            if self.open is None or self.open["type"] != "reasoning":
                evs = self._start({"type": "reasoning", "id": _new_id("rs"), "summary": [],
                                   "content": [{"type": "reasoning_text", "text": ""}]})
                idx = len(self.items) - 1
            self.open["content"][0]["text"] += ev.text
            return evs + [{"type": "response.reasoning_text.delta", "item_id": self.open["id"], "output_index": idx,
                           "content_index": 0, "delta": ev.text}]
        if isinstance(ev, ContentDelta):
            evs = []
            if self.open is None or self.open["type"] != "message" or self.open.get("_channel") != ev.channel:
                evs = self._start({"type": "message", "id": _new_id("msg"), "role": "assistant", "_channel": ev.channel,
                                   "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]})
                idx = len(self.items) - 1
            self.open["content"][0]["text"] += ev.text
            return evs + [{"type": "response.output_text.delta", "item_id": self.open["id"], "output_index": idx,
                           "content_index": 0, "delta": ev.text, "logprobs": []}]
        if isinstance(ev, ToolCallBegin):
            return self._start({"type": "function_call", "id": _new_id("fc"), "call_id": ev.call_id,
                                "name": ev.name, "arguments": ""})
        if isinstance(ev, ToolCallDelta) and self.open is not None and self.open["type"] == "function_call":
            self.open["arguments"] += ev.text
            return [{"type": "response.function_call_arguments.delta", "item_id": self.open["id"], "output_index": idx,
                     "delta": ev.text}]
        if isinstance(ev, ToolCall):
            if self.open is not None and self.open["type"] == "function_call":
                self.open["arguments"] = ev.arguments
            return self.close()
        return []

    def output(self) -> list[dict]:
        return [{k: v for k, v in it.items() if not k.startswith("_")} for it in self.items]


def _usage(gen: Generation) -> dict:
    u = gen.last.usage if gen.last is not None and gen.last.usage is not None else None
    inp, out, cached = (u.prompt_tokens, u.completion_tokens, u.cached_tokens) if u else (len(gen.prompt), 0, 0)
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": cached}, "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": gen.reply.reasoning_tokens}, "total_tokens": inp + out}


def _final(ctx: Any, req: ResponsesRequest, gen: Generation, items: _Items) -> tuple[str, dict]:
    """The finished response and its lifecycle event type."""
    out = gen.last
    reason = str(out.finish_reason) if out is not None else "cancelled"
    if gen.stopped_by is not None:
        reason = "stop"
    usage = _usage(gen)
    if reason == "error":
        resp = req.response(ctx, "failed", items.output(), usage, error={"code": "server_error", "message": str(out.error)})
        return "response.failed", resp
    if reason == "cancelled":
        resp = req.response(ctx, "failed", items.output(), usage,
                            error={"code": "server_shutdown", "message": "the request was cancelled"})
        return "response.failed", resp
    if reason == "context_length":
        resp = req.response(ctx, "failed", items.output(), usage,
                            error={"code": "context_length_exceeded",
                                   "message": f"the conversation reached the model's context of {ctx.max_context} tokens"})
        return "response.failed", resp
    if reason == "length":
        return "response.incomplete", req.response(ctx, "incomplete", items.output(), usage, incomplete="max_output_tokens")
    return "response.completed", req.response(ctx, "completed", items.output(), usage)


async def responses(ctx: Any, data: Any, disconnected: Any) -> Any:
    req = await asyncio.to_thread(ResponsesRequest, ctx, data)  # rendering and grammars: off the event loop
    if req.stream and len(req.prompt) >= ctx.max_context:
        return _failed_stream(ctx, req)
    ctx.check_prompt(req.prompt)
    gen = Generation(ctx, req.prompt, req.params, constraint=req.constraint())
    if req.stream:
        return _stream(ctx, req, gen)
    try:
        return await disconnected(_whole(ctx, req, gen))
    finally:
        gen.cancel()


async def _whole(ctx: Any, req: ResponsesRequest, gen: Generation) -> dict:
    items = _Items(req, ctx)
    async for ch in gen.chunks():
        for ev in ch.events:
            items.feed(ev)
    items.close()
    _, resp = _final(ctx, req, gen, items)
    if req.store:
        ctx.store.put(resp, req.input_items)
    return resp


async def _failed_stream(ctx: Any, req: ResponsesRequest) -> AsyncIterator[dict]:
    seq = 0
    for kind, resp in (("response.created", req.response(ctx, "in_progress", [])),
                       ("response.failed", req.response(ctx, "failed", [], error={
                           "code": "context_length_exceeded",
                           "message": f"This model's maximum context length is {ctx.max_context} tokens, and the "
                                      f"prompt is {len(req.prompt)} tokens."}))):
        yield {"type": kind, "sequence_number": seq, "response": resp}
        seq += 1


async def _stream(ctx: Any, req: ResponsesRequest, gen: Generation) -> AsyncIterator[dict]:
    seq = 0

    def numbered(ev: dict) -> dict:
        nonlocal seq
        ev["sequence_number"] = seq
        seq += 1
        return ev

    items = _Items(req, ctx)
    try:
        yield numbered({"type": "response.created", "response": req.response(ctx, "in_progress", [])})
        yield numbered({"type": "response.in_progress", "response": req.response(ctx, "in_progress", [])})
        async for ch in gen.chunks():
            for ev in ch.events:
                for out in items.feed(ev):
                    yield numbered(_public(out))
        for out in items.close():
            yield numbered(_public(out))
        kind, resp = _final(ctx, req, gen, items)
        if req.store:
            ctx.store.put(resp, req.input_items)
        yield numbered({"type": kind, "response": resp})
    finally:
        gen.cancel()


def _public(ev: dict) -> dict:
    item = ev.get("item")
    if isinstance(item, dict) and any(k.startswith("_") for k in item):
        ev = dict(ev, item={k: v for k, v in item.items() if not k.startswith("_")})
    return ev


def get_response(ctx: Any, response_id: str) -> dict:
    v = ctx.store.get(response_id)
    if v is None:
        raise APIError(404, f"no stored response {response_id!r}", code="not_found")
    return v[0]
