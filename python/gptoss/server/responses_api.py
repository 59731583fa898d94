"""``POST /v1/responses`` and ``GET /v1/responses/{id}``: the Responses API (Codex, the Agents SDK).

The reply becomes output items in the order the model wrote them: ``reasoning`` (the analysis
channel), ``message`` (text for the user) and ``function_call``. Streamed, the events come in the
order the openai SDK's stream helper requires: ``response.created``, ``response.in_progress``,
then for every item ``output_item.added``, its content part or argument deltas, ``output_item.done``,
and last ``response.completed`` (or ``response.incomplete`` / ``response.failed`` with the reason).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional

from ..chat import tool_result
from ..reply import ContentDelta, ReasoningDelta, ToolCall, ToolCallBegin, ToolCallDelta
from .builtin_tools import TOOL_TYPES
from .conversation import function_tools, render_prompt
from .errors import APIError, invalid
from .generation import Generation
from .params import REASONING_EFFORTS, Body, sampling_params
from .responses_input import input_messages, output_as_input
from .store import StoredResponse

if TYPE_CHECKING:
    from .app import ServerContext

log = logging.getLogger("gptoss.server")

__all__ = ["responses", "get_response"]

IGNORED = ("user", "metadata", "service_tier", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
           "truncation", "max_tool_calls")
UNSUPPORTED = {"background": "responses run in the foreground", "conversation": "use previous_response_id",
               "prompt": "no stored prompts"}
# Tool types this server does not run: ignored (with a log line), never an error. The built-in
# ones (builtin_tools.TOOL_TYPES) run when the server has them, and are ignored otherwise.
_OTHER_TOOLS = {"local_shell", "file_search", "mcp", "computer_use_preview", "image_generation", "custom", "shell",
                "apply_patch"}
MAX_TOOL_STEPS = 16
_SERVER_CALLS = ("code_interpreter_call", "web_search_call", "mcp_call")  # run by the server


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponsesRequest:
    def __init__(self, ctx: ServerContext, data: Any):
        body = Body(data, ignored=IGNORED, unsupported=UNSUPPORTED)
        ctx.check_model(body.take_str("model", required=True))
        self.instructions = body.take_str("instructions")
        tools = body.take_list("tools") or []
        self.builtin: set[str] = set()  # "python", "browser": run here
        for i, t in enumerate(tools):
            kind = t.get("type") if isinstance(t, dict) else None
            if kind == "function":
                continue
            if kind in TOOL_TYPES and ctx.tools is not None and ctx.tools.available(TOOL_TYPES[kind]):
                self.builtin.add(TOOL_TYPES[kind])
            elif kind in TOOL_TYPES or kind in _OTHER_TOOLS:
                log.info("ignoring a %r tool: this server does not run it", kind)
            else:
                raise invalid(f"tools[{i}].type", f"unknown tool type {kind!r}")
        self.tools = [t for t in tools if isinstance(t, dict) and t.get("type") == "function"]
        # The MCP server's tools are offered too (the request's own function of a name wins).
        own = {t.get("name") for t in self.tools}
        mcp = [t for n, t in (ctx.mcp.tools.items() if ctx.mcp is not None else []) if n not in own]
        self.mcp_names = {t["name"] for t in mcp}
        declared = function_tools(self.tools + mcp)
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
        self.id = _new_id("resp")
        self.created = int(time.time())
        self.conversation = self.id
        earlier: list = []  # harmony messages of the chain so far
        history: list = []
        if self.previous_response_id is not None:
            prev = ctx.store.get(self.previous_response_id)
            if prev is None:
                raise APIError(404, f"no stored response {self.previous_response_id!r}", param="previous_response_id",
                               code="previous_response_not_found")
            history = prev.input_items + output_as_input(prev.response["output"])
            earlier, self.conversation = prev.messages, prev.conversation
        self.input_items = history + items
        stored = {it["id"]: it for it in history if isinstance(it, dict) and "id" in it}
        # A chain is rendered from the messages as the model wrote them; new input from its items.
        calls = {it["call_id"]: it["name"] for it in history
                 if isinstance(it, dict) and it.get("type") == "function_call" and "call_id" in it}
        messages = earlier + input_messages(items, ctx.store.unseal, stored.get, calls) if earlier or items else []
        if not messages:
            raise invalid("input", "'input' is empty")
        self.prompt = render_prompt(
            messages, ctx.tokenizer, reasoning_effort=self.effort, tools=declared, raw_tools=self.tools,
            instructions=self.instructions, response_format=fmt, tool_choice=tc, thinking_token_budget=budget,
            harmony_constraint=ctx.harmony_constraint, format_field="text.format",
            builtin_tools=[k for k in ("browser", "python") if k in self.builtin])

    def response(self, ctx: ServerContext, status: str, output: list, usage: Optional[dict] = None,
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


def _web_action(recipient: str, arguments: str, browser: Any) -> dict:
    """A browser call as a web_search_call's action."""
    try:
        args = json.loads(arguments or "{}")
    except ValueError:
        args = {}
    args = args if isinstance(args, dict) else {}
    fn = recipient[len("browser."):]
    if fn == "search":
        return {"type": "search", "query": str(args.get("query", ""))}
    url = ""
    if browser is not None and browser.page_stack:
        url = browser.page_stack[-1].url
    if fn == "find":
        return {"type": "find_in_page", "pattern": str(args.get("pattern", "")), "url": url}
    target = args.get("id", -1)
    return {"type": "open_page", "url": target if isinstance(target, str) and target.startswith("http") else url}


class _Items:
    """Output items built from reply events, with the stream events that announce them."""

    def __init__(self, req: ResponsesRequest, ctx: ServerContext):
        self.req, self.ctx = req, ctx
        self.items: list[dict] = []
        self.open: Optional[dict] = None     # the item being written

    @property
    def _idx(self) -> int:
        return len(self.items) - 1

    def _start(self, item: dict) -> list[dict]:
        evs = self.close()
        self.items.append(item)
        self.open = item
        idx = self._idx
        evs.append({"type": "response.output_item.added", "output_index": idx, "item": dict(item, status="in_progress")})
        if item["type"] in ("message", "reasoning"):
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []} if item["type"] == "message" \
                else {"type": "reasoning_text", "text": ""}
            evs.append({"type": "response.content_part.added", "item_id": item["id"], "output_index": idx,
                        "content_index": 0, "part": part})
        elif item["type"] == "code_interpreter_call":
            evs.append({"type": "response.code_interpreter_call.in_progress", "item_id": item["id"], "output_index": idx})
        elif item["type"] == "mcp_call":
            evs.append({"type": "response.mcp_call.in_progress", "item_id": item["id"], "output_index": idx})
        elif item["type"] == "web_search_call":
            evs.append({"type": "response.web_search_call.in_progress", "item_id": item["id"], "output_index": idx})
        return evs

    def close(self, final: bool = False) -> list[dict]:
        """Ends the open item (a built-in call stays open until `tool_done`, unless `final`: the
        response ends without running it)."""
        item = self.open
        if item is None or (not final and item["type"] in _SERVER_CALLS):
            return []
        self.open = None
        idx = self._idx
        evs = []
        if item["type"] in _SERVER_CALLS:
            item["status"] = "incomplete"
            return [{"type": "response.output_item.done", "output_index": idx, "item": item}]
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
        idx = self._idx
        if isinstance(ev, ReasoningDelta):
            evs = []
            if self.open is None or self.open["type"] != "reasoning":
                evs = self._start({"type": "reasoning", "id": _new_id("rs"), "summary": [],
                                   "content": [{"type": "reasoning_text", "text": ""}]})
            self.open["content"][0]["text"] += ev.text
            return evs + [{"type": "response.reasoning_text.delta", "item_id": self.open["id"], "output_index": self._idx,
                           "content_index": 0, "delta": ev.text}]
        if isinstance(ev, ContentDelta):
            evs = []
            if self.open is None or self.open["type"] != "message" or self.open.get("_channel") != ev.channel:
                evs = self._start({"type": "message", "id": _new_id("msg"), "role": "assistant", "_channel": ev.channel,
                                   "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]})
            self.open["content"][0]["text"] += ev.text
            return evs + [{"type": "response.output_text.delta", "item_id": self.open["id"], "output_index": self._idx,
                           "content_index": 0, "delta": ev.text, "logprobs": []}]
        if isinstance(ev, ToolCallBegin):
            if ev.recipient == "python" and "python" in self.req.builtin:
                return self._start({"type": "code_interpreter_call", "id": _new_id("ci"), "code": "",
                                    "container_id": "cntr_" + self.req.conversation, "outputs": None})
            if ev.recipient.startswith("browser.") and "browser" in self.req.builtin:
                return self._start({"type": "web_search_call", "id": _new_id("ws"), "_recipient": ev.recipient,
                                    "action": {"type": "search", "query": ""}})
            if ev.recipient == f"functions.{ev.name}" and ev.name in self.req.mcp_names:
                return self._start({"type": "mcp_call", "id": _new_id("mcp"), "server_label": self.ctx.mcp.label,
                                    "name": ev.name, "arguments": "", "output": None, "error": None})
            return self._start({"type": "function_call", "id": _new_id("fc"), "call_id": ev.call_id,
                                "name": ev.name, "arguments": ""})
        if isinstance(ev, ToolCallDelta) and self.open is not None:
            kind = self.open["type"]
            if kind == "function_call":
                self.open["arguments"] += ev.text
                return [{"type": "response.function_call_arguments.delta", "item_id": self.open["id"],
                         "output_index": idx, "delta": ev.text}]
            if kind == "code_interpreter_call":
                self.open["code"] += ev.text
                return [{"type": "response.code_interpreter_call_code.delta", "item_id": self.open["id"],
                         "output_index": idx, "delta": ev.text}]
            if kind == "mcp_call":
                self.open["arguments"] += ev.text
                return [{"type": "response.mcp_call_arguments.delta", "item_id": self.open["id"],
                         "output_index": idx, "delta": ev.text}]
            return []
        if isinstance(ev, ToolCall) and self.open is not None:
            kind = self.open["type"]
            if kind == "function_call":
                self.open["arguments"] = ev.arguments
                return self.close()
            if kind == "code_interpreter_call":
                self.open["code"] = ev.arguments
                return [{"type": "response.code_interpreter_call_code.done", "item_id": self.open["id"],
                         "output_index": idx, "code": ev.arguments},
                        {"type": "response.code_interpreter_call.interpreting", "item_id": self.open["id"],
                         "output_index": idx}]
            if kind == "web_search_call":
                self.open["_arguments"] = ev.arguments
                return [{"type": "response.web_search_call.searching", "item_id": self.open["id"], "output_index": idx}]
            if kind == "mcp_call":
                self.open["arguments"] = ev.arguments
                return [{"type": "response.mcp_call_arguments.done", "item_id": self.open["id"], "output_index": idx,
                         "arguments": ev.arguments}]
        return []

    def server_call_open(self) -> Optional[str]:
        """The kind of call the server runs that is waiting for its output, if any."""
        kind = self.open["type"] if self.open is not None else None
        return kind if kind in _SERVER_CALLS else None

    def tool_done(self, output: str, browser: Any = None, error: Optional[str] = None) -> list[dict]:
        """The open call the server ran: its output (python, MCP) or action (browser) and its end."""
        item, self.open = self.open, None
        idx = self._idx
        evs = []
        if item["type"] == "code_interpreter_call":
            item["outputs"] = [{"type": "logs", "logs": output}]
            evs.append({"type": "response.code_interpreter_call.completed", "item_id": item["id"], "output_index": idx})
        elif item["type"] == "mcp_call":
            item["output"], item["error"] = output, error
            evs.append({"type": "response.mcp_call.failed" if error else "response.mcp_call.completed",
                        "item_id": item["id"], "output_index": idx})
        else:
            item["action"] = _web_action(item["_recipient"], item.get("_arguments", ""), browser)
            evs.append({"type": "response.web_search_call.completed", "item_id": item["id"], "output_index": idx})
        item["status"] = "completed"
        evs.append({"type": "response.output_item.done", "output_index": idx, "item": item})
        return evs

    def output(self) -> list[dict]:
        return [{k: v for k, v in it.items() if not k.startswith("_")} for it in self.items]


def _add_usage(total: Optional[dict], gen: Generation) -> dict:
    u = gen.last.usage if gen.last is not None and gen.last.usage is not None else None
    inp, out, cached = (u.prompt_tokens, u.completion_tokens, u.cached_tokens) if u else (len(gen.prompt), 0, 0)
    t = total or {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0}
    t["input_tokens"] += inp
    t["input_tokens_details"]["cached_tokens"] += cached
    t["output_tokens"] += out
    t["output_tokens_details"]["reasoning_tokens"] += gen.reply.reasoning_tokens
    t["total_tokens"] = t["input_tokens"] + t["output_tokens"]
    return t


def _final(ctx: ServerContext, req: ResponsesRequest, gen: Generation, items: _Items, usage: dict) -> tuple[str, dict]:
    """The finished response and its lifecycle event type."""
    out = gen.last
    reason = str(out.finish_reason) if out is not None else "cancelled"
    if gen.stopped_by is not None:
        reason = "stop"
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


async def responses(ctx: ServerContext, data: Any, disconnected: Any) -> Any:
    req = await asyncio.to_thread(ResponsesRequest, ctx, data)  # rendering and grammars: off the event loop
    if req.stream and len(req.prompt.tokens) >= ctx.max_context:
        return _failed_stream(ctx, req)
    ctx.check_prompt(req.prompt.tokens)
    gen = Generation(ctx, req.prompt.tokens, req.params, constraint=req.prompt.constraint())
    events = _run(ctx, req, gen)
    if req.stream:
        return events

    async def final() -> dict:
        last = None
        async for ev in events:
            last = ev
        return last["response"]

    return await disconnected(final())


async def _failed_stream(ctx: ServerContext, req: ResponsesRequest) -> AsyncIterator[dict]:
    seq = 0
    for kind, resp in (("response.created", req.response(ctx, "in_progress", [])),
                       ("response.failed", req.response(ctx, "failed", [], error={
                           "code": "context_length_exceeded",
                           "message": f"This model's maximum context length is {ctx.max_context} tokens, and the "
                                      f"prompt is {len(req.prompt.tokens)} tokens."}))):
        yield {"type": kind, "sequence_number": seq, "response": resp}
        seq += 1


async def _run(ctx: ServerContext, req: ResponsesRequest, gen: Generation) -> AsyncIterator[dict]:
    """The response's stream events, the last one its lifecycle end (completed, incomplete or
    failed). Built-in tool calls run here, and generation continues after their output, at most
    MAX_TOOL_STEPS times."""
    seq = 0

    def numbered(ev: dict) -> dict:
        nonlocal seq
        ev["sequence_number"] = seq
        seq += 1
        return _public(ev)

    items = _Items(req, ctx)
    tools = ctx.tools.tools_for(req.conversation, req.builtin) if req.builtin else None
    prompt, usage, steps = req.prompt, None, 0
    try:
        yield numbered({"type": "response.created", "response": req.response(ctx, "in_progress", [])})
        yield numbered({"type": "response.in_progress", "response": req.response(ctx, "in_progress", [])})
        while True:
            async for ch in gen.chunks():
                for ev in ch.events:
                    for out in items.feed(ev):
                        yield numbered(out)
            usage = _add_usage(usage, gen)
            calls = gen.reply.tool_calls
            kind = items.server_call_open()
            if not (kind and calls and gen.finish_reason == "tool_calls" and steps < MAX_TOOL_STEPS):
                break
            steps += 1
            call = calls[-1]
            if kind == "mcp_call":
                output, error = await ctx.mcp.call(call.name, call.arguments)
                evs = items.tool_done(output, error=error)
                message = tool_result(call, output)
            else:
                result = await asyncio.to_thread(tools.run, call)
                evs = items.tool_done(result.output, tools.browser)
                message = result.message
            for out in evs:
                yield numbered(out)
            prompt = prompt.followed_by(gen.reply.messages() + [message], ctx.tokenizer)
            ctx.check_prompt(prompt.tokens)
            gen = Generation(ctx, prompt.tokens, req.params, constraint=prompt.constraint())
        for out in items.close(final=True):
            yield numbered(out)
        kind, resp = _final(ctx, req, gen, items, usage)
        if req.store:
            sys_dev = 2 if len(prompt.messages) > 1 and prompt.messages[1].role == "developer" else 1
            ctx.store.put(StoredResponse(resp, req.input_items, list(prompt.messages[sys_dev:]) + gen.reply.messages(),
                                         req.conversation))
        yield numbered({"type": kind, "response": resp})
    finally:
        gen.cancel()
        if tools is not None and not (req.store or ctx.store.has_conversation(req.conversation)):
            ctx.tools.release(req.conversation)


def _public(ev: dict) -> dict:
    item = ev.get("item")
    if isinstance(item, dict) and any(k.startswith("_") for k in item):
        ev = dict(ev, item={k: v for k, v in item.items() if not k.startswith("_")})
    return ev


def get_response(ctx: ServerContext, response_id: str) -> dict:
    v = ctx.store.get(response_id)
    if v is None:
        raise APIError(404, f"no stored response {response_id!r}", code="not_found")
    return v.response
