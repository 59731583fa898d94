"""The tool-execution loop: chat with the built-in tools declared, run the calls the model
addresses to ``python`` and ``browser.*``, feed their outputs back, until the model answers.

    for ev in model.chat(msgs, builtin_tools=["python", BrowserTool(LocalSearchBackend("docs"))]):
        ...   # ReasoningDelta, ContentDelta, ToolCall, ToolOutput, ..., Done

`chat(..., builtin_tools=...)` and `Conversation(..., builtin_tools=...)` come here. The system
message declares the tools as harmony requires (the descriptions openai-harmony renders); each
executed call yields a `ToolOutput` event after its `ToolCall`, and the tool's message (author
the tool, on the call's channel) joins the conversation. The final `Done` carries every message
of the turn (assistant calls, tool outputs, the answer), the summed usage, and as `tool_calls`
the calls left for the caller (function tools). Its finish_reason is the last generation's, or
"max_tool_steps" when the model still calls a built-in tool after `max_tool_steps` executions
(that call is then in `tool_calls`, unexecuted).

`BuiltinTools` holds one conversation's tools (a python sandbox, a browser page stack) for a
server or any caller that keeps them across turns: pass the instance, and close it when done.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

__all__ = ["ToolOutput", "BuiltinTools", "chat_with_tools", "DEFAULT_MAX_TOOL_STEPS"]

DEFAULT_MAX_TOOL_STEPS = 16


@dataclass
class ToolOutput:
    """Event: a built-in tool ran. `call` is the `ToolCall`, `output` the text the model reads,
    `message` the harmony tool message appended to the conversation."""

    call: Any
    output: str
    message: Any

    @property
    def name(self) -> str:
        return self.call.recipient or self.call.name


class BuiltinTools:
    """The built-in tools of one conversation.

    tools: "python" (a `PythonTool`, its sandbox started at the first call), "browser" (a
    `BrowserTool` over the web backend of the environment: YDC_API_KEY or EXA_API_KEY), or tool
    objects (`PythonTool`, `BrowserTool`) which the caller keeps owning. tokenizer: sizes the
    browser's views (the chat passes the model's).
    """

    def __init__(self, tools: Sequence[Union[str, Any]], *, tokenizer: Any = None):
        from .browser import BrowserTool
        from .python_tool import PythonTool

        self.python: Optional[PythonTool] = None
        self.browser: Optional[BrowserTool] = None
        self._python_lazy = False
        self._owned: list[Any] = []
        self._lock = threading.Lock()
        for t in tools:
            if isinstance(t, str):
                if t == "python":
                    PythonTool.check_available()  # fail now, not mid-chat
                    self._python_lazy = True
                elif t == "browser":
                    from .backends import web_backend_from_env

                    self.browser = BrowserTool(web_backend_from_env(), tokenizer=tokenizer)
                else:
                    raise ValueError(f"unknown built-in tool {t!r} (expected 'python', "
                                     "'browser' or a PythonTool / BrowserTool)")
            elif isinstance(t, PythonTool):
                self.python = t
            elif isinstance(t, BrowserTool):
                self.browser = t
                if t.tokenizer is None and tokenizer is not None:
                    t.tokenizer = tokenizer
            else:
                raise ValueError(f"a built-in tool must be 'python', 'browser', a PythonTool or "
                                 f"a BrowserTool, got {type(t).__name__}")
        if self._python_lazy and self.python is not None:
            raise ValueError("built-in tool 'python' given twice")

    @property
    def has_python(self) -> bool:
        return self.python is not None or self._python_lazy

    def namespaces(self) -> list[Any]:
        """For `SystemContent.builtin_tools`: harmony's own definitions, or a python namespace
        whose description says the tool's timeout when it is not the default 120 s."""
        from .. import harmony

        out: list[Any] = []
        if self.browser is not None:
            out.append("browser")
        if self.has_python:
            d = self.python.description if self.python is not None else harmony.PYTHON.description
            out.append("python" if d == harmony.PYTHON.description
                       else harmony.ToolNamespace("python", d, ()))
        return out

    def handles(self, call: Any) -> bool:
        r = call.recipient or call.name
        return (r == "python" and self.has_python) or \
            (r.startswith("browser.") and self.browser is not None)

    def run(self, call: Any) -> ToolOutput:
        """Execute one call (errors become the output text the model reads)."""
        from ..chat import tool_result

        r = call.recipient or call.name
        if r == "python":
            output = self._python().execute(_code_of(call.arguments))
        elif r.startswith("browser.") and self.browser is not None:
            output = self.browser.call(r[len("browser."):], call.arguments)
        else:
            raise ValueError(f"{r!r} is not a built-in tool of this conversation")
        return ToolOutput(call, output, tool_result(call, output))

    def _python(self) -> Any:
        with self._lock:
            if self.python is None:
                from .python_tool import PythonTool

                self.python = PythonTool()
                self._owned.append(self.python)
            return self.python

    def close(self) -> None:
        """Close the tools this object made (a python sandbox); tools passed in stay open."""
        for t in self._owned:
            t.close()
        self._owned.clear()

    def __enter__(self) -> "BuiltinTools":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _code_of(arguments: str) -> str:
    """The model writes raw code to python; accept {"code": ...} JSON too."""
    s = arguments.strip()
    if s.startswith("{"):
        try:
            obj = json.loads(s)
        except json.JSONDecodeError:
            return arguments
        if isinstance(obj, dict) and isinstance(obj.get("code"), str) and len(obj) == 1:
            return obj["code"]
    return arguments


def _system_message(messages: Sequence[Any], namespaces: list[Any], reasoning_effort: str,
                    current_date: Optional[str]) -> tuple[Any, list[Any]]:
    """The system message declaring the tools, and the messages without a given one."""
    from .. import harmony as h
    from ..chat import REASONING_EFFORTS

    msgs = list(messages)
    if msgs and isinstance(msgs[0], h.Message) and msgs[0].role == "system" \
            and isinstance(msgs[0].content, h.SystemContent):
        sc = msgs[0].content
        if sc.builtin_tools:
            raise ValueError("declare built-in tools either in the SystemContent or with "
                             "builtin_tools=, not both")
        return h.Message("system", dataclasses.replace(sc, builtin_tools=tuple(namespaces))), \
            msgs[1:]
    if reasoning_effort not in REASONING_EFFORTS:
        raise ValueError(f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}, "
                         f"got {reasoning_effort!r}")
    kw: dict[str, Any] = {"reasoning_effort": reasoning_effort,
                          "builtin_tools": tuple(namespaces)}
    if current_date is not None:
        kw["current_date"] = current_date
    return h.Message("system", h.SystemContent(**kw)), msgs


def chat_with_tools(model: Any, messages: Sequence[Any], *, builtin_tools: Any,
                    max_tool_steps: int = DEFAULT_MAX_TOOL_STEPS, stream: bool = True,
                    reasoning_effort: str = "low", current_date: Optional[str] = None,
                    tokenizer: Any = None, **chat_kwargs: Any):
    """`chat` with the built-in tools run in a loop; see the module docstring. `chat_kwargs`
    are `chat`'s (tools, instructions, sampling, on_token, sampling fields)."""
    from ..chat import ChatResponse, Done, chat, default_tokenizer

    if not isinstance(max_tool_steps, int) or max_tool_steps < 0:
        raise ValueError(f"max_tool_steps must be a non-negative integer, got {max_tool_steps!r}")
    tok = tokenizer if tokenizer is not None else default_tokenizer(model)
    owned = not isinstance(builtin_tools, BuiltinTools)
    tools = BuiltinTools(builtin_tools, tokenizer=tok) if owned else builtin_tools
    try:
        system, rest = _system_message(messages, tools.namespaces(), reasoning_effort,
                                       current_date)
        # Validate everything (messages, tools, sampling) before the first token.
        first = chat(model, [system, *rest], tokenizer=tok, stream=True, **chat_kwargs)
    except BaseException:
        if owned:
            tools.close()
        raise
    # The steps of one turn share their prompt prefix: the prefix cache keeps it.
    events = _loop(model, [system, *rest], tools, owned, max_tool_steps, tok, first, chat_kwargs)
    if stream:
        return events
    done = None
    for ev in events:
        if isinstance(ev, Done):
            done = ev
    assert done is not None
    return ChatResponse(done.messages, done.usage, done.finish_reason, done.tool_calls)


def _loop(model: Any, history: list[Any], tools: BuiltinTools, owned: bool, max_steps: int, tok: Any,
          first: Iterator[Any], chat_kwargs: dict[str, Any]) -> Iterator[Any]:
    from ..chat import Done, chat
    from ..generate import Usage

    new: list[Any] = []
    usage = Usage()
    steps = 0
    events = first
    try:
        while True:
            done = None
            for ev in events:
                if isinstance(ev, Done):
                    done = ev
                else:
                    yield ev
            assert done is not None
            usage = usage + done.usage
            history += done.messages
            new += done.messages
            builtin = [c for c in done.tool_calls if tools.handles(c)]
            pending = [c for c in done.tool_calls if not tools.handles(c)]
            if done.finish_reason != "tool_calls" or not builtin or pending:
                yield Done(usage=usage, finish_reason=done.finish_reason, messages=new,
                           tool_calls=pending or builtin)
                return
            if steps >= max_steps:
                yield Done(usage=usage, finish_reason="max_tool_steps", messages=new,
                           tool_calls=builtin)
                return
            for call in builtin:
                out = tools.run(call)
                steps += 1
                yield out
                history.append(out.message)
                new.append(out.message)
            events = chat(model, history, tokenizer=tok, stream=True, **chat_kwargs)
    finally:
        close = getattr(events, "close", None)
        if close is not None:  # a consumer that stopped early stops the generation too
            close()
        if owned:
            tools.close()

