"""OpenAI conversations (Chat Completions messages, Responses input items) as harmony prompts.

Earlier assistant turns are rendered the way the model produced them: a tool call as a
``commentary`` message to ``functions.NAME`` with ``<|constrain|>json``, the reasoning before a
tool call kept, the analysis of a turn that ended in a final answer dropped (harmony's rule), so
that the next turn's prompt repeats the previous one as far as the format allows and the prefix
cache can reuse it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from .. import harmony
from ..chat import build_messages
from .errors import APIError, invalid

__all__ = ["chat_messages", "function_tools", "render_prompt"]


def _text(content: Any, where: str) -> str:
    """Message content: a string, or an array of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                out.append(part)
                continue
            if not isinstance(part, dict):
                raise invalid(f"{where}[{j}]", "content parts must be objects")
            kind = part.get("type")
            if kind in ("text", "input_text", "output_text", "reasoning_text", "summary_text"):
                if not isinstance(part.get("text"), str):
                    raise invalid(f"{where}[{j}].text", "a text part needs 'text'")
                out.append(part["text"])
            elif kind == "refusal":
                out.append(str(part.get("refusal", "")))
            else:
                raise invalid(f"{where}[{j}].type", f"content parts of type {kind!r} are not supported (text only)",
                              code="unsupported_parameter")
        return "".join(out)
    raise invalid(where, f"message content must be a string or an array of parts, got {type(content).__name__}")


def chat_messages(messages: list) -> list[dict]:
    """Chat Completions `messages`, checked, as the dicts `gptoss.chat.build_messages` takes."""
    if not messages:
        raise invalid("messages", "'messages' must have at least one message")
    out = []
    known_calls: set[str] = set()
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(where, "each message must be an object")
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise invalid(f"{where}.role", f"unknown role {role!r}")
        d: dict[str, Any] = {"role": role, "content": _text(m.get("content"), f"{where}.content")}
        if role == "assistant":
            for key in ("reasoning", "reasoning_content"):
                if m.get(key) is not None:
                    d["reasoning"] = _text(m[key], f"{where}.{key}")
            calls = m.get("tool_calls") or []
            if not isinstance(calls, list):
                raise invalid(f"{where}.tool_calls", "'tool_calls' must be an array")
            d["tool_calls"] = []
            for j, tc in enumerate(calls):
                fn = tc.get("function") if isinstance(tc, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                    raise invalid(f"{where}.tool_calls[{j}].function", "a tool call needs function.name")
                args = fn.get("arguments", "{}")
                if not isinstance(args, str):
                    args = json.dumps(args)
                call_id = tc.get("id") or f"call_{i}_{j}"
                known_calls.add(call_id)
                d["tool_calls"].append({"id": call_id, "function": {"name": fn["name"], "arguments": args}})
        elif role == "tool":
            tid = m.get("tool_call_id")
            if m.get("name"):
                d["name"] = str(m["name"])
            elif not isinstance(tid, str) or tid not in known_calls:
                raise invalid(f"{where}.tool_call_id", "a tool message needs the 'tool_call_id' of an earlier "
                              "assistant tool call (or a 'name')")
            d["tool_call_id"] = tid
        out.append(d)
    return out


def function_tools(tools: Optional[list], param: str = "tools") -> list[dict]:
    """Function tools (Chat Completions' nested or Responses' flat form) as harmony tool dicts."""
    out = []
    for i, t in enumerate(tools or []):
        if not isinstance(t, dict):
            raise invalid(f"{param}[{i}]", "each tool must be an object")
        if t.get("type", "function") != "function":
            continue  # the caller decides about other tool types
        fn = t.get("function", t)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise invalid(f"{param}[{i}]", "a function tool needs a name")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise invalid(f"{param}[{i}].parameters", "'parameters' must be a JSON schema object")
        out.append({"name": fn["name"], "description": fn.get("description") or "", "parameters": params})
    names = [t["name"] for t in out]
    if len(set(names)) != len(names):
        raise invalid(param, "tool names must be unique")
    return out


_STRUCTURED_FIELDS = ("response_format", "text.format", "tool_choice", "thinking_token_budget", "tools")


@dataclass
class Prompt:
    """A rendered prompt: its harmony `messages` (system and developer first), its `tokens`, and
    the reply's constraint (`constraint()` makes a fresh one per sample; None when none)."""

    messages: list
    tokens: list[int]
    _prepare: Callable[[list], tuple[list, Any]]
    _made: list

    def constraint(self) -> Any:
        if self._made:
            return self._made.pop()
        return self._prepare(self.messages)[1]

    def followed_by(self, more: Sequence[Any], tokenizer: Any) -> "Prompt":
        """The same conversation with `more` harmony messages (a tool call and its output)."""
        msgs, first = self._prepare(list(self.messages) + list(more))
        return Prompt(msgs, _render(msgs, tokenizer), self._prepare, [first])


def _render(msgs: Sequence[Any], tokenizer: Any) -> list[int]:
    return list(harmony.render(list(msgs), for_completion=True, next_role="assistant", tokenizer=tokenizer))


def render_prompt(messages: Sequence[Any], tokenizer: Any, *, reasoning_effort: str, tools: Sequence[Any] = (),
                  raw_tools: Sequence[Any] = (), instructions: Optional[str] = None, response_format: Any = None,
                  tool_choice: Any = None, thinking_token_budget: Optional[int] = None,
                  harmony_constraint: bool = False, format_field: str = "response_format",
                  builtin_tools: Sequence[str] = ()) -> Prompt:
    """The prompt of a conversation (chat-style dicts or harmony messages, without the system
    message). `tools` are the function tools the prompt declares, `raw_tools` the same as the
    request gave them (with their ``strict``); `builtin_tools` ("browser", "python") are declared
    in the system message."""
    from ..structured import prepare_reply

    head = [harmony.Message("system", harmony.SystemContent(reasoning_effort=reasoning_effort,
                                                             builtin_tools=tuple(builtin_tools)))]
    try:
        full = build_messages(head + list(messages), reasoning_effort=reasoning_effort, tools=tools,
                              instructions=instructions)
    except ValueError as e:
        raise APIError(400, str(e), param="messages") from None

    def prepare(msgs: list) -> tuple[list, Any]:
        return prepare_reply(msgs, tokenizer, tools=raw_tools, response_format=response_format,
                             tool_choice=tool_choice, thinking_token_budget=thinking_token_budget,
                             harmony_constraint=harmony_constraint)

    try:
        msgs, first = prepare(full)  # every structured-outputs error here, before anything is queued
    except ValueError as e:
        msg = str(e)
        field = next((f for f in _STRUCTURED_FIELDS if f.split(".")[0] in msg), None)
        if field == "response_format":
            field = format_field
        raise APIError(400, msg, param=field) from None
    return Prompt(msgs, _render(msgs, tokenizer), prepare, [first])
