"""Responses API input (a string or items) as the chat-style messages harmony renders.

Items: messages (any role; text parts), ``function_call``, ``function_call_output``,
``reasoning`` (its text, or its ``encrypted_content`` from this server) and ``item_reference``
(to stored output). A reasoning item goes with the assistant message or tool calls after it, so
the chain of thought before a tool call is rendered back as the model wrote it.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from .. import harmony
from .conversation import _text
from .errors import invalid

__all__ = ["input_messages", "output_as_input"]


def _reasoning_text(item: dict, where: str, unseal: Callable[[Any], Optional[str]]) -> str:
    parts = item.get("content") or []
    if not isinstance(parts, list):
        raise invalid(f"{where}.content", "a reasoning item's 'content' must be an array")
    text = _text(parts, f"{where}.content") if parts else ""
    if not text and item.get("encrypted_content") is not None:
        text = unseal(item["encrypted_content"]) or ""
    return text


def input_messages(items: Any, unseal: Callable[[Any], Optional[str]],
                   resolve: Callable[[str], Optional[dict]], earlier_calls: Optional[dict] = None) -> list[Any]:
    """Chat-style message dicts (and harmony messages, for built-in tool calls) for
    `gptoss.chat.build_messages`."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise invalid("input", "'input' must be a string or an array of items")
    out: list[dict] = []
    pending_reasoning: list[str] = []
    assistant: Optional[dict] = None  # the assistant turn being assembled (reasoning, calls)
    call_names: dict[str, str] = dict(earlier_calls or {})  # call_id -> function name

    def flush() -> None:
        nonlocal assistant
        if pending_reasoning:  # reasoning with nothing after it
            out.append({"role": "assistant", "content": "", "reasoning": "".join(pending_reasoning)})
            pending_reasoning.clear()
        assistant = None

    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(where, "each input item must be an object")
        kind = item.get("type", "message")
        if kind == "item_reference":
            ref = resolve(str(item.get("id")))
            if ref is None:
                raise invalid(f"{where}.id", f"no stored item {item.get('id')!r}")
            item, kind = ref, ref.get("type", "message")
        if kind == "reasoning":
            if assistant is not None and assistant.get("tool_calls"):
                flush()
            pending_reasoning.append(_reasoning_text(item, where, unseal))
        elif kind == "function_call":
            name, call_id = item.get("name"), item.get("call_id")
            if not isinstance(name, str) or not name or not isinstance(call_id, str) or not call_id:
                raise invalid(where, "a function_call item needs 'name' and 'call_id'")
            args = item.get("arguments", "{}")
            if not isinstance(args, str):
                args = json.dumps(args)
            if assistant is None:
                assistant = {"role": "assistant", "content": "", "tool_calls": []}
                if pending_reasoning:
                    assistant["reasoning"] = "".join(pending_reasoning)
                    pending_reasoning.clear()
                out.append(assistant)
            assistant.setdefault("tool_calls", []).append({"id": call_id, "function": {"name": name, "arguments": args}})
            call_names[call_id] = name
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if call_id not in call_names:
                raise invalid(f"{where}.call_id", f"no earlier function_call with call_id {call_id!r}")
            output = item.get("output", "")
            text = output if isinstance(output, str) else _text(output, f"{where}.output")
            flush()
            out.append({"role": "tool", "name": call_names[call_id], "content": text})
        elif kind == "code_interpreter_call":
            # The python tool's call and output, as the model writes and reads them.
            code = item.get("code")
            if not isinstance(code, str):
                raise invalid(f"{where}.code", "a code_interpreter_call item needs its 'code'")
            flush()
            logs = "".join(o.get("logs", "") for o in item.get("outputs") or [] if isinstance(o, dict))
            out.append(harmony.Message(role="assistant", content=code, channel="analysis", recipient="python",
                                       content_type="code"))
            out.append(harmony.Message(role="tool", content=logs, author_name="python", recipient="assistant",
                                       channel="analysis"))
        elif kind == "web_search_call":
            flush()  # the page text the model read is not in the item: the call is left out
        elif kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise invalid(f"{where}.role", f"unknown role {role!r}")
            text = _text(item.get("content"), f"{where}.content")
            if role == "assistant":
                msg = {"role": "assistant", "content": text}
                if pending_reasoning:
                    msg["reasoning"] = "".join(pending_reasoning)
                    pending_reasoning.clear()
                assistant = None
                out.append(msg)
            else:
                flush()
                out.append({"role": role, "content": text})
        else:
            raise invalid(f"{where}.type", f"input items of type {kind!r} are not supported",
                          code="unsupported_parameter")
    flush()
    if not out and items:
        raise invalid("input", "'input' is empty")
    return out


def output_as_input(output: list) -> list:
    """A response's output items as input items of the next turn (``previous_response_id``)."""
    return [dict(item) for item in output]
