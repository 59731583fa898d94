"""The harmony data model: roles, messages, system and developer content, tool namespaces
(including the built-in browser and python ones), response formats; and what rendering and
parsing share (their error, the default tokenizer)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from ..tokenizer import Tokenizer, load_tokenizer

Role = Literal["system", "developer", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant", "tool")
ReasoningEffort = Literal["low", "medium", "high"]

CHANNEL = "<|channel|>"
CONSTRAIN = "<|constrain|>"


class HarmonyError(ValueError):
    """Invalid input to the renderer, or malformed tokens in strict parsing."""


_default_tok: Tokenizer | None = None


def default_tokenizer() -> Tokenizer:
    """The tokenizer used when none is passed: ``load_tokenizer()`` (environment
    variables ``GPTOSS_TIKTOKEN_VOCAB`` / ``TIKTOKEN_ENCODINGS_BASE``)."""
    global _default_tok
    if _default_tok is None:
        _default_tok = load_tokenizer()
    return _default_tok


# --------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    """A function the model may call. ``parameters`` is a JSON Schema (or None)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ToolNamespace:
    """A group of tools rendered as ``## {name}`` (e.g. ``functions``, ``browser``)."""

    name: str
    description: str | None = None
    tools: tuple[Tool, ...] = ()


@dataclass(frozen=True)
class ResponseFormat:
    """A structured-output format for the developer message's ``# Response Formats``."""

    name: str
    schema: Mapping[str, Any]
    description: str | None = None


_BROWSER_DESCRIPTION = (
    "Tool for browsing.\n"
    "The `cursor` appears in brackets before each browsing display: `[{cursor}]`.\n"
    "Cite information from the tool using the following format:\n"
    "`【{cursor}†L{line_start}(-L{line_end})?】`, for example: `【6†L9-L11】` or `【8†L3】`.\n"
    "Do not quote more than 10 words directly from the tool output.\n"
    "sources=web (default: web)"
)

BROWSER = ToolNamespace(
    "browser",
    _BROWSER_DESCRIPTION,
    (
        Tool(
            "search",
            "Searches for information related to `query` and displays `topn` results.",
            {
                "type": "object",
                "properties": {
                    "query": {"type": "string"},
                    "topn": {"type": "number", "default": 10},
                    "source": {"type": "string"},
                },
                "required": ["query"],
            },
        ),
        Tool(
            "open",
            "Opens the link `id` from the page indicated by `cursor` starting at line number `loc`, "
            "showing `num_lines` lines.\n"
            "Valid link ids are displayed with the formatting: `【{id}†.*】`.\n"
            "If `cursor` is not provided, the most recent page is implied.\n"
            "If `id` is a string, it is treated as a fully qualified URL associated with `source`.\n"
            "If `loc` is not provided, the viewport will be positioned at the beginning of the document "
            "or centered on the most relevant passage, if available.\n"
            "Use this function without `id` to scroll to a new location of an opened page.",
            {
                "type": "object",
                "properties": {
                    "id": {"type": ["number", "string"], "default": -1},
                    "cursor": {"type": "number", "default": -1},
                    "loc": {"type": "number", "default": -1},
                    "num_lines": {"type": "number", "default": -1},
                    "view_source": {"type": "boolean", "default": False},
                    "source": {"type": "string"},
                },
            },
        ),
        Tool(
            "find",
            "Finds exact matches of `pattern` in the current page, or the page given by `cursor`.",
            {
                "type": "object",
                "properties": {
                    "pattern": {"type": "string"},
                    "cursor": {"type": "number", "default": -1},
                },
                "required": ["pattern"],
            },
        ),
    ),
)

PYTHON = ToolNamespace(
    "python",
    "Use this tool to execute Python code in your chain of thought. The code will not be shown to the "
    "user. This tool should be used for internal reasoning, but not for code that is intended to be "
    "visible to the user (e.g. when creating plots, tables, or files).\n\n"
    "When you send a message containing Python code to python, it will be executed in a stateful "
    "Jupyter notebook environment. python will respond with the output of the execution or time out "
    "after 120.0 seconds. The drive at '/mnt/data' can be used to save and persist user files. "
    "Internet access for this session is UNKNOWN. Depends on the cluster.",
    (),
)

_BUILTINS = {"browser": BROWSER, "python": PYTHON}


@dataclass(frozen=True)
class SystemContent:
    """The system message.  ``None`` omits a line (as the reference renderer does).

    ``builtin_tools`` holds ``"browser"``, ``"python"`` or custom
    :class:`ToolNamespace` objects.
    """

    model_identity: str | None = "You are ChatGPT, a large language model trained by OpenAI."
    knowledge_cutoff: str | None = "2024-06"
    current_date: str | None = None
    reasoning_effort: ReasoningEffort | None = "medium"
    builtin_tools: Sequence[str | ToolNamespace] = ()
    valid_channels: Sequence[str] = ("analysis", "commentary", "final")
    channel_required: bool = True

    def namespaces(self) -> list[ToolNamespace]:
        """Tool namespaces in rendering order (sorted by name, last one wins)."""
        out: dict[str, ToolNamespace] = {}
        for t in self.builtin_tools:
            if isinstance(t, str):
                if t not in _BUILTINS:
                    raise HarmonyError(f"unknown builtin tool {t!r} (expected 'browser' or 'python')")
                t = _BUILTINS[t]
            out[t.name] = t
        return [out[k] for k in sorted(out)]


@dataclass(frozen=True)
class DeveloperContent:
    """The developer message: instructions, function tools, response formats.

    ``tools`` holds :class:`Tool` objects (namespace ``functions``) or whole
    :class:`ToolNamespace` objects.  ``response_formats`` holds
    :class:`ResponseFormat` objects or ``{"name", "schema", "description"}`` dicts.
    """

    instructions: str | None = None
    tools: Sequence[Tool | ToolNamespace] = ()
    response_formats: Sequence[ResponseFormat | Mapping[str, Any]] = ()

    def namespaces(self) -> list[ToolNamespace]:
        out: dict[str, ToolNamespace] = {}
        functions = [t for t in self.tools if isinstance(t, Tool)]
        if functions:
            out["functions"] = ToolNamespace("functions", None, tuple(functions))
        for t in self.tools:
            if isinstance(t, ToolNamespace):
                out[t.name] = t
            elif not isinstance(t, Tool):
                raise HarmonyError(f"developer tools must be Tool or ToolNamespace, got {type(t).__name__}")
        return [out[k] for k in sorted(out)]

    def has_function_tools(self) -> bool:
        return any(ns.name == "functions" and ns.tools for ns in self.namespaces())


Content = Union[str, SystemContent, DeveloperContent]


@dataclass(frozen=True)
class Message:
    """One harmony message.

    Tool results use ``role="tool"`` with ``author_name`` set to the tool
    (e.g. ``"functions.get_weather"``) and ``recipient="assistant"``.
    """

    role: str
    content: Content = ""
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None
    author_name: str | None = None

    @property
    def text(self) -> str:
        """The content as text ('' for system/developer content objects)."""
        return self.content if isinstance(self.content, str) else ""
