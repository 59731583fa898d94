"""Harmony chat format for gpt-oss: rendering conversations to tokens and
parsing model output back into messages (spec section 6).

Rendering is token-identical to OpenAI's reference renderer (``openai-harmony``
0.0.8, ``src/encoding.rs``), including its JSON-Schema-to-TypeScript tool
signatures and its rule for dropping chain-of-thought.  Parsing is incremental
(:class:`StreamParser`, one token at a time) and lenient by default: malformed
or truncated output never raises; the parser returns a best-effort result and
sets ``malformed``/``truncated``.  With ``strict=True`` it raises
:class:`HarmonyError` instead.

Example::

    tok = load_tokenizer(vocab_file="o200k_base.tiktoken")
    ids = render([Message("system", SystemContent()), Message("user", "hi")],
                 for_completion=True, tokenizer=tok)
    ...
    msgs = parse(sampled_ids, tokenizer=tok)
"""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from .tokenizer import N_VOCAB, Tokenizer, load_tokenizer

__all__ = [
    "HarmonyError",
    "Role",
    "ROLES",
    "Tool",
    "ToolNamespace",
    "ResponseFormat",
    "BROWSER",
    "PYTHON",
    "SystemContent",
    "DeveloperContent",
    "Message",
    "render",
    "render_message",
    "render_for_training",
    "parse",
    "StreamParser",
    "MessageStart",
    "ContentDelta",
    "MessageEnd",
    "Event",
    "json_schema_to_typescript",
    "default_tokenizer",
]

Role = Literal["system", "developer", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant", "tool")
ReasoningEffort = Literal["low", "medium", "high"]

_CHANNEL = "<|channel|>"
_CONSTRAIN = "<|constrain|>"


class HarmonyError(ValueError):
    """Invalid input to the renderer, or malformed tokens in strict parsing."""


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


# --------------------------------------------------------------------------
# JSON helpers matching serde_json's output (the reference is written in Rust)
# --------------------------------------------------------------------------


def _fmt_float(x: float) -> str:
    """Format like serde_json (ryu): 1.0, 1e20, 1.5e-7, 0.0001."""
    if not math.isfinite(x):
        return "null"
    r = repr(x)
    sign = ""
    if r.startswith("-"):
        sign, r = "-", r[1:]
    mant, _, exp_s = r.partition("e")
    exp = int(exp_s) if exp_s else 0
    ip, _, fp = mant.partition(".")
    raw = ip + fp
    stripped = raw.lstrip("0")
    point = len(ip) + exp - (len(raw) - len(stripped))  # digits before the decimal point
    digits = stripped.rstrip("0")
    if not digits:
        return sign + "0.0"
    n = len(digits)
    if 0 <= point - n and point <= 16:
        body = digits + "0" * (point - n) + ".0"
    elif 0 < point <= 16:
        body = digits[:point] + "." + digits[point:]
    elif -5 < point <= 0:
        body = "0." + "0" * (-point) + digits
    elif n == 1:
        body = f"{digits}e{point - 1}"
    else:
        body = f"{digits[0]}.{digits[1:]}e{point - 1}"
    return sign + body


def _json(v: Any) -> str:
    """Compact JSON as serde_json's ``Display`` writes it (keys in insertion order)."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        # serde_json holds integers as i64/u64; larger ones become f64.
        return str(v) if -(2**63) <= v < 2**64 else _fmt_float(float(v))
    if isinstance(v, float):
        return _fmt_float(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, Mapping):
        return "{" + ",".join(json.dumps(str(k), ensure_ascii=False) + ":" + _json(x) for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_json(x) for x in v) + "]"
    raise HarmonyError(f"not JSON-serializable: {type(v).__name__}")


def _lines(s: str) -> list[str]:
    """Rust ``str::lines``: split on \\n, drop one trailing \\r per line, no final empty line."""
    if not s:
        return []
    parts = s.split("\n")
    if s.endswith("\n"):
        parts.pop()
    return [p[:-1] if p.endswith("\r") else p for p in parts]


# --------------------------------------------------------------------------
# JSON Schema -> TypeScript-like signature (reference: json_schema_to_typescript)
# --------------------------------------------------------------------------


def _get(schema: Any, key: str) -> Any:
    return schema.get(key) if isinstance(schema, Mapping) else None


def _has(schema: Any, key: str) -> bool:
    return isinstance(schema, Mapping) and key in schema


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _is_enum(schema: Any) -> bool:
    e = _get(schema, "enum")
    return isinstance(e, list) and len(e) > 0


def _nullable(schema: Any) -> bool:
    return _get(schema, "nullable") is True


def _default_comment(schema: Any, raw_enum_strings: bool) -> str:
    """``default: X``.  Strings are quoted (raw) unless the schema is an enum; then
    property-level defaults print the raw string, variant-level ones the JSON."""
    d = schema["default"]
    if isinstance(d, str) and not _is_enum(schema):
        return f'default: "{d}"'
    if isinstance(d, str) and raw_enum_strings:
        return f"default: {d}"
    return f"default: {_json(d)}"


def _one_of_variant(variant: Any, indent: str) -> str:
    t = json_schema_to_typescript(variant, indent + "   ")
    if _nullable(variant) and "null" not in t:
        t += " | null"
    return t


def json_schema_to_typescript(schema: Any, indent: str = "") -> str:
    """Render a JSON Schema the way harmony shows function parameters to the model."""
    one_of = _get(schema, "oneOf")
    if isinstance(one_of, list):
        out = []
        for variant in one_of:
            out.append(f"\n{indent} | ")
            out.append(_one_of_variant(variant, indent))
            comments = []
            desc = _str(_get(variant, "description"))
            if desc is not None:
                comments.append(desc)
            if _has(variant, "default"):
                comments.append(_default_comment(variant, raw_enum_strings=False))
            if comments:
                out.append(" // " + " ".join(comments))
        return "".join(out)

    ty = _get(schema, "type")
    if isinstance(ty, list):
        names = ["number" if t == "integer" else t for t in ty if isinstance(t, str)]
        if names:
            return " | ".join(names)
        return "any"
    if not isinstance(ty, str):
        return "any"

    if ty == "object":
        return _object_to_typescript(schema, indent)
    if ty == "string":
        enum = _get(schema, "enum")
        if isinstance(enum, list):
            vals = [f'"{v}"' for v in enum if isinstance(v, str)]
            if vals:
                return " | ".join(vals)
        return "string"
    if ty in ("number", "integer"):
        return "number"
    if ty == "boolean":
        return "boolean"
    if ty == "array":
        if _has(schema, "items"):
            return json_schema_to_typescript(schema["items"], indent) + "[]"
        return "Array<any>"
    return "any"


def _object_to_typescript(schema: Mapping[str, Any], indent: str) -> str:
    out: list[str] = []
    desc = _str(schema.get("description"))
    if desc is not None:
        out.append(f"{indent}// {desc}\n")
    out.append("{\n")
    props = schema.get("properties")
    if isinstance(props, Mapping):
        req = schema.get("required")
        required = {r for r in req if isinstance(r, str)} if isinstance(req, list) else set()
        for key, val in props.items():
            opt = "" if key in required else "?"
            title = _str(_get(val, "title"))
            if title is not None:
                out.append(f"{indent}// {title}\n{indent}//\n")
            one_of = _get(val, "oneOf")
            if one_of is None:
                d = _str(_get(val, "description"))
                if d is not None:
                    out.append(f"{indent}// {d}\n")
            examples = _get(val, "examples")
            if isinstance(examples, list) and examples:
                out.append(f"{indent}// Examples:\n")
                for ex in examples:
                    if isinstance(ex, str):
                        out.append(f'{indent}// - "{ex}"\n')
            if isinstance(one_of, list):
                out.append(_one_of_property(key, val, one_of, opt, indent))
                continue
            t = json_schema_to_typescript(val, indent + "    ")
            if _nullable(val) and "null" not in t:
                t += " | null"
            out.append(f"{indent}{key}{opt}: {t},")
            if one_of is None and _has(val, "default"):
                out.append(" // " + _default_comment(val, raw_enum_strings=True))
            out.append("\n")
    out.append(f"{indent}}}")
    return "".join(out)


def _one_of_property(key: str, val: Mapping[str, Any], variants: list[Any], opt: str, indent: str) -> str:
    out: list[str] = []
    prop_desc = _str(val.get("description"))
    # The reference skips the property description when the first variant repeats it.
    skip = prop_desc is not None and bool(variants) and _str(_get(variants[0], "description")) == prop_desc
    above = False
    if not skip and prop_desc is not None:
        out.append(f"{indent}// {prop_desc}\n")
        above = True
    if "default" in val:
        out.append(f"{indent}// {_default_comment(val, raw_enum_strings=True)}\n")
    out.append(f"{indent}{key}{opt}:\n")
    for i, variant in enumerate(variants):
        out.append(f"{indent} | ")
        out.append(_one_of_variant(variant, indent))
        comments = []
        vdesc = _str(_get(variant, "description"))
        if not (i == 0 and above) and vdesc is not None and vdesc != prop_desc:
            comments.append(vdesc)
        if _has(variant, "default"):
            comments.append(_default_comment(variant, raw_enum_strings=True))
        if comments:
            out.append(" // " + " ".join(comments))
        out.append("\n")
    out.append(f"{indent},\n")
    return "".join(out)


def _tools_section(namespaces: Sequence[ToolNamespace]) -> str:
    sections = ["# Tools"]
    for ns in namespaces:
        lines = [f"## {ns.name}\n"]
        if ns.description is not None:
            for line in _lines(ns.description):
                lines.append(f"// {line}" if ns.tools else line)
        if ns.tools:
            lines.append(f"namespace {ns.name} {{\n")
            for tool in ns.tools:
                for line in _lines(tool.description):
                    lines.append(f"// {line}")
                if tool.parameters is not None:
                    lines.append(f"type {tool.name} = (_: {json_schema_to_typescript(tool.parameters, '')}) => any;\n")
                else:
                    lines.append(f"type {tool.name} = () => any;\n")
            lines.append(f"}} // namespace {ns.name}")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def _response_formats_section(formats: Sequence[ResponseFormat | Mapping[str, Any]]) -> str:
    # Not in the reference renderer (0.0.8); laid out as harmony's docs/format.md shows.
    parts = ["# Response Formats"]
    for f in formats:
        if isinstance(f, Mapping):
            f = ResponseFormat(name=f["name"], schema=f["schema"], description=f.get("description"))
        body = [f"## {f.name}", ""]
        if f.description:
            body.extend(f"// {line}" for line in _lines(f.description))
        body.append(_json(f.schema))
        parts.append("\n".join(body))
    return "\n\n".join(parts)


def _system_text(sys: SystemContent, has_function_tools: bool) -> str:
    sections: list[str] = []
    top = []
    if sys.model_identity is not None:
        top.append(sys.model_identity)
    if sys.knowledge_cutoff is not None:
        top.append(f"Knowledge cutoff: {sys.knowledge_cutoff}")
    if sys.current_date is not None:
        top.append(f"Current date: {sys.current_date}")
    if top:
        sections.append("\n".join(top))
    if sys.reasoning_effort is not None:
        if sys.reasoning_effort not in ("low", "medium", "high"):
            raise HarmonyError(f"reasoning_effort must be low|medium|high, got {sys.reasoning_effort!r}")
        sections.append(f"Reasoning: {sys.reasoning_effort}")
    namespaces = sys.namespaces()
    if namespaces:
        sections.append(_tools_section(namespaces))
    if sys.valid_channels:
        header = f"# Valid channels: {', '.join(sys.valid_channels)}."
        if sys.channel_required:
            header += " Channel must be included for every message."
        if has_function_tools:
            header += "\nCalls to these tools must go to the commentary channel: 'functions'."
        sections.append(header)
    return "\n\n".join(sections)


def _developer_text(dev: DeveloperContent) -> str:
    sections: list[str] = []
    if dev.instructions is not None:
        sections += ["# Instructions", dev.instructions]
    namespaces = dev.namespaces()
    if namespaces:
        sections.append(_tools_section(namespaces))
    if dev.response_formats:
        sections.append(_response_formats_section(dev.response_formats))
    return "\n\n".join(sections)


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

_default_tok: Tokenizer | None = None


def default_tokenizer() -> Tokenizer:
    """The tokenizer used when none is passed: ``load_tokenizer()`` (environment
    variables ``GPTOSS_TIKTOKEN_VOCAB`` / ``TIKTOKEN_ENCODINGS_BASE``)."""
    global _default_tok
    if _default_tok is None:
        _default_tok = load_tokenizer()
    return _default_tok


def _has_function_tools(messages: Sequence[Message]) -> bool:
    return any(isinstance(m.content, DeveloperContent) and m.content.has_function_tools() for m in messages)


def render_message(
    message: Message,
    tokenizer: Tokenizer | None = None,
    *,
    conversation_has_function_tools: bool = False,
) -> list[int]:
    """Tokens of one message: ``<|start|>{header}<|message|>{content}{end}``."""
    tok = tokenizer or default_tokenizer()
    out: list[int] = []
    _render_into(message, tok, conversation_has_function_tools, out)
    return out


def _render_into(m: Message, tok: Tokenizer, has_functions: bool, out: list[int]) -> None:
    if m.role not in ROLES:
        raise HarmonyError(f"unknown role {m.role!r}; expected one of {ROLES}")
    text = tok.encode_ordinary
    out.append(tok.start)
    if m.role == "tool":
        # Tool results are authored by the tool itself, e.g. "functions.get_weather".
        if not m.author_name:
            raise HarmonyError("a tool message needs author_name (the tool, e.g. 'functions.get_weather')")
        out += text(m.author_name)
    else:
        out += text(m.role if m.author_name is None else f"{m.role}:{m.author_name}")
    if m.recipient is not None and m.recipient != "all":
        out += text(f" to={m.recipient}")
    if m.channel is not None:
        out.append(tok.channel)
        out += text(m.channel)
    if m.content_type is not None:
        if m.content_type.startswith(_CONSTRAIN):
            # <|constrain|> must be the special token, not its text.
            out += text(" ")
            out.append(tok.constrain)
            rest = m.content_type[len(_CONSTRAIN):]
            if rest:
                out += text(rest)
        else:
            out += text(f" {m.content_type}")
    out.append(tok.message)
    c = m.content
    if isinstance(c, SystemContent):
        if m.role != "system":
            raise HarmonyError(f"SystemContent may only appear in system messages, found in {m.role}")
        out += text(_system_text(c, has_functions))
    elif isinstance(c, DeveloperContent):
        if m.role != "developer":
            raise HarmonyError(f"DeveloperContent may only appear in developer messages, found in {m.role}")
        out += text(_developer_text(c))
    elif isinstance(c, str):
        out += text(c)
    else:
        raise HarmonyError(f"message content must be str, SystemContent or DeveloperContent, got {type(c).__name__}")
    # An assistant message addressed to anyone (a tool call) ends in <|call|>.
    out.append(tok.call if (m.role == "assistant" and m.recipient is not None) else tok.end)


def _kept_messages(messages: Sequence[Message], auto_drop_analysis: bool) -> list[Message]:
    """The reference renderer's CoT rule: if the last assistant message is on
    ``final``, drop every ``analysis`` message before the *first* ``final``
    message of the conversation (later analysis is kept)."""
    if not auto_drop_analysis:
        return list(messages)
    last_assistant_final = False
    for m in reversed(messages):
        if m.role == "assistant":
            last_assistant_final = m.channel == "final"
            break
    if not last_assistant_final:
        return list(messages)
    first_final = next((i for i, m in enumerate(messages) if m.channel == "final"), None)
    if first_final is None:
        return list(messages)
    return [m for i, m in enumerate(messages) if not (i < first_final and m.channel == "analysis")]


def render(
    messages: Iterable[Message],
    for_completion: bool = False,
    next_role: str = "assistant",
    tokenizer: Tokenizer | None = None,
    *,
    auto_drop_analysis: bool = True,
) -> list[int]:
    """Render a conversation.  With ``for_completion`` append ``<|start|>{next_role}``
    so the model continues with the next turn."""
    tok = tokenizer or default_tokenizer()
    msgs = list(messages)
    has_functions = _has_function_tools(msgs)
    out: list[int] = []
    for m in _kept_messages(msgs, auto_drop_analysis):
        _render_into(m, tok, has_functions, out)
    if for_completion:
        if next_role not in ROLES:
            raise HarmonyError(f"unknown role {next_role!r}")
        out.append(tok.start)
        out += tok.encode_ordinary(next_role)
    return out


def render_for_training(
    messages: Iterable[Message], tokenizer: Tokenizer | None = None, *, auto_drop_analysis: bool = True
) -> list[int]:
    """Like :func:`render`, but a final assistant message at the end closes with ``<|return|>``."""
    tok = tokenizer or default_tokenizer()
    msgs = list(messages)
    out = render(msgs, tokenizer=tok, auto_drop_analysis=auto_drop_analysis)
    if msgs and msgs[-1].role == "assistant" and msgs[-1].channel == "final" and out:
        out[-1] = tok.return_
    return out


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageStart:
    """A header was parsed; content follows."""

    role: str
    channel: str | None
    recipient: str | None
    content_type: str | None
    author_name: str | None = None


@dataclass(frozen=True)
class ContentDelta:
    """New text of the current message (complete UTF-8 characters only)."""

    text: str


@dataclass(frozen=True)
class MessageEnd:
    """A message is complete.  ``end`` is the token that closed it, or None if
    the stream stopped (truncation) or a new message began without one."""

    message: Message
    end: Literal["end", "call", "return"] | None


Event = Union[MessageStart, ContentDelta, MessageEnd]

# Rust's char::is_whitespace (Unicode White_Space) and u8::is_ascii_whitespace,
# which the reference header parser uses; Python's str.isspace differs.
_UNICODE_WS = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_ASCII_WS = " \t\n\x0c\r"


def _trim(s: str) -> str:
    i, j = 0, len(s)
    while i < j and s[i] in _UNICODE_WS:
        i += 1
    while j > i and s[j - 1] in _UNICODE_WS:
        j -= 1
    return s[i:j]


def _split_ascii_ws(s: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    for ch in s:
        if ch in _ASCII_WS:
            if cur:
                parts.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        parts.append("".join(cur))
    return parts


@dataclass
class _Header:
    role: str
    author_name: str | None = None
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None


def _parse_header(
    header: str, role: str | None, default_role: str, full: bool
) -> tuple[_Header, str | None, list[str]]:
    """Parse a decoded header (reference: ``parse_header_from_string``).

    Returns the header, leftover words, and the problems found (empty when the
    reference parser would accept it).  ``full=False`` treats everything after
    role and channel as content (a header cut short by a stop token).
    """
    problems: list[str] = []
    channel = None
    idx = header.find(_CHANNEL)
    if idx >= 0:
        after = header[idx + len(_CHANNEL):]
        end = next((k for k, c in enumerate(after) if c in _UNICODE_WS or c == "<"), len(after))
        if end == 0:
            problems.append("channel marker present but no channel value found in header")
        else:
            channel = after[:end]
        header = header[:idx] + after[end:]
    header = _trim(header)
    if _CONSTRAIN in header:
        # "to=x<|constrain|>json" -> "to=x <|constrain|>json"
        header = _trim(header.replace(_CONSTRAIN, " " + _CONSTRAIN))
    parts = _split_ascii_ws(header)

    author_name = None
    if role is None:
        if not parts:
            problems.append("message header did not contain a role")
            role = default_role
        else:
            first = parts[0]
            prefix, colon, name = first.partition(":")
            if first in ROLES:
                role = first
                if role == "tool":
                    author_name = first
            elif colon and prefix in ROLES and prefix != "tool" and name:
                # "user:alice" as written for named authors (the reference cannot read these back).
                role, author_name = prefix, name
                parts[0] = prefix
            elif len(parts) > 1 or first.startswith("to="):
                parts.pop(0)
                role, author_name = "tool", first
            else:
                problems.append(f"unknown role {first!r}")
                parts.pop(0)
                role, author_name = "tool", first
    if parts and parts[0] == role:
        parts.pop(0)

    recipient = content_type = None
    if full and parts:
        n = len(parts)
        last = parts.pop()
        if last.startswith("to="):
            recipient = last[3:]
        elif n == 1:
            recipient = last  # the reference reads a lone word as the recipient
        else:
            content_type = last
            raw = parts.pop()
            recipient = raw[3:] if raw.startswith("to=") else raw
    remaining = " ".join(parts) if parts else None
    if full and remaining is not None:
        problems.append(f"unexpected tokens remaining in message header: {remaining!r}")
    return _Header(role, author_name, channel, recipient, content_type), remaining, problems




# openai-harmony names id 200018 <|reserved_200018|> (its reserved range starts at 200013),
# while tiktoken's o200k_harmony also registers it as <|endofprompt|>. The parser follows
# harmony, so parsed text matches the reference byte for byte.
_HARMONY_NAMES = {200018: b"<|reserved_200018|>"}


def _harmony_bytes(tokenizer: Any, ids: Sequence[int]) -> bytes:
    if not any(i in _HARMONY_NAMES for i in ids):
        return tokenizer.decode_bytes(ids)
    return b"".join(_HARMONY_NAMES.get(i) or tokenizer.decode_bytes([i]) for i in ids)


class StreamParser:
    """Incremental harmony parser; feed sampled tokens with :meth:`process`.

    ``role`` is the role of the first message when the stream starts right
    after ``<|start|>{role}`` (the completion prompt); pass None if the stream
    begins with ``<|start|>`` itself.  Lenient by default: problems are
    recorded in :attr:`errors` (``malformed`` becomes True) and parsing goes
    on with a best-effort result; ``strict=True`` raises :class:`HarmonyError`.
    """

    def __init__(
        self, role: str | None = "assistant", strict: bool = False, tokenizer: Tokenizer | None = None
    ) -> None:
        if role is not None and role not in ROLES:
            raise HarmonyError(f"unknown role {role!r}")
        self.tokenizer = tokenizer or default_tokenizer()
        self.strict = strict
        self._first_role = role
        self._default_role = role or "assistant"
        t = self.tokenizer
        self._stop: dict[int, Literal["end", "call", "return"]] = {t.end: "end", t.call: "call", t.return_: "return"}
        self.messages: list[Message] = []
        self.tokens: list[int] = []
        self.errors: list[str] = []
        self.truncated = False
        self.last_content_delta: str | None = None
        self._state: Literal["expect_start", "header", "content"] = "header" if role is not None else "expect_start"
        self._next_role: str | None = role
        self._header_tokens: list[int] = []
        self._header: _Header | None = None
        self._parts: list[str] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._finished = False

    # -- public state ------------------------------------------------------

    @property
    def malformed(self) -> bool:
        """True once any problem was met (see :attr:`errors`)."""
        return bool(self.errors)

    @property
    def state(self) -> str:
        """``"expect_start"``, ``"header"`` or ``"content"``."""
        return self._state

    @property
    def current_role(self) -> str | None:
        if self._header is not None:
            return self._header.role
        return self._next_role if self._state == "header" else None

    @property
    def current_channel(self) -> str | None:
        return self._header.channel if self._header else None

    @property
    def current_recipient(self) -> str | None:
        return self._header.recipient if self._header else None

    @property
    def current_content_type(self) -> str | None:
        return self._header.content_type if self._header else None

    @property
    def current_author_name(self) -> str | None:
        return self._header.author_name if self._header else None

    @property
    def current_content(self) -> str:
        return "".join(self._parts)

    # -- feeding -------------------------------------------------------------

    def process(self, token: int) -> list[Event]:
        """Consume one token; return the events it produced."""
        if self._finished:
            self._finished = False  # more tokens after EOS: keep going
        self.tokens.append(token)
        self.last_content_delta = None
        events: list[Event] = []
        if self.strict:
            self._step(int(token), events)
            return events
        try:
            self._step(int(token), events)
        except Exception as e:  # noqa: BLE001 - lenient mode must never raise
            self.errors.append(f"internal: {type(e).__name__}: {e}")
            self._reset()
        return events

    def process_eos(self) -> list[Event]:
        """Signal the end of the stream; closes a truncated message."""
        events: list[Event] = []
        self.last_content_delta = None
        if self._finished:
            return events
        self._finished = True
        if self._state == "content":
            self.truncated = True
            self._finish_message(None, events)
        elif self._state == "header" and (self._header_tokens or self.tokens):
            # Mid-header (even right after <|start|>); only an empty stream is fine.
            self.truncated = True
            self._problem("unexpected end of stream inside a message header")
            self._reset()
        return events

    finish = process_eos

    def process_all(self, tokens: Iterable[int]) -> list[Event]:
        events: list[Event] = []
        for t in tokens:
            events += self.process(t)
        return events

    # -- internals -----------------------------------------------------------

    def _problem(self, msg: str) -> None:
        if self.strict:
            raise HarmonyError(msg)
        self.errors.append(msg)

    def _reset(self) -> None:
        self._state = "expect_start"
        self._next_role = None
        self._header_tokens = []
        self._header = None
        self._parts = []
        self._decoder.reset()

    def _begin_header(self, role: str | None) -> None:
        self._state = "header"
        self._next_role = role
        self._header_tokens = []
        self._header = None

    def _step(self, token: int, events: list[Event]) -> None:
        t = self.tokenizer
        if not (0 <= token < N_VOCAB):
            self._problem(f"token id {token} is outside the vocabulary")
            return
        if self._state == "expect_start":
            if token == t.start:
                self._begin_header(None)
            elif token in (t.channel, t.message, t.constrain):
                self._problem(f"header token {token} without <|start|>")
                self._begin_header(self._default_role)
                self._step(token, events)
            elif t.is_special(token):
                self._problem(f"unexpected special token {token} while expecting <|start|>")
            else:
                # Stray text: keep it as content of a headerless message.
                self._problem(f"text token {token} while expecting <|start|>")
                self._open_message(_Header(self._default_role), events)
                self._step(token, events)
        elif self._state == "header":
            if token == t.message:
                self._end_header(events)
            elif token in self._stop:
                self._problem("stop token inside a message header (no <|message|>)")
                self._header_cut_short(self._stop[token], events)
            elif token == t.start:
                self._problem("<|start|> inside a message header")
                self._begin_header(None)
            else:
                self._header_tokens.append(token)
        else:  # content
            if token in self._stop:
                self._finish_message(self._stop[token], events)
            elif token == t.start:
                self._problem("<|start|> inside message content (missing end token)")
                self._finish_message(None, events)
                self._begin_header(None)
            else:
                if t.is_special(token):
                    # Kept as its text, as the reference parser does.
                    self._problem(f"special token {token} inside message content")
                text = self._decoder.decode(_harmony_bytes(t, [token]))
                if text:
                    self._parts.append(text)
                    self.last_content_delta = text
                    events.append(ContentDelta(text))

    def _decode_header(self) -> str:
        raw = _harmony_bytes(self.tokenizer, self._header_tokens)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self._problem("message header is not valid UTF-8")
            return raw.decode("utf-8", "replace")

    def _end_header(self, events: list[Event]) -> None:
        text = self._decode_header()
        header, _, problems = _parse_header(text, self._next_role, self._default_role, full=True)
        for p in problems:
            self._problem(p)
        self._open_message(header, events)

    def _header_cut_short(self, end: Literal["end", "call", "return"], events: list[Event]) -> None:
        # The reference (non-strict) keeps such a message when the role is known:
        # channel from the header, the rest of the words as content.
        if not self._header_tokens and self._next_role is None:
            self._reset()
            return
        text = self._decode_header()
        header, remaining, problems = _parse_header(text, self._next_role, self._default_role, full=False)
        for p in problems:
            self._problem(p)
        self._open_message(header, events)
        if remaining:
            self._parts.append(remaining)
            events.append(ContentDelta(remaining))
        self._finish_message(end, events)

    def _open_message(self, header: _Header, events: list[Event]) -> None:
        self._header = header
        self._state = "content"
        self._next_role = None
        self._header_tokens = []
        self._parts = []
        self._decoder.reset()
        events.append(MessageStart(header.role, header.channel, header.recipient, header.content_type,
                                   header.author_name))

    def _finish_message(self, end: Literal["end", "call", "return"] | None, events: list[Event]) -> None:
        tail = self._decoder.decode(b"", final=True)
        if tail:
            self._parts.append(tail)
            self.last_content_delta = tail
            events.append(ContentDelta(tail))
        h = self._header or _Header(self._default_role)
        msg = Message(
            role=h.role,
            content="".join(self._parts),
            channel=h.channel,
            recipient=h.recipient,
            content_type=h.content_type,
            author_name=h.author_name,
        )
        self.messages.append(msg)
        events.append(MessageEnd(msg, end))
        self._reset()


def parse(
    tokens: Iterable[int],
    role: str | None = "assistant",
    strict: bool = False,
    tokenizer: Tokenizer | None = None,
) -> list[Message]:
    """Parse completion tokens (what the model sampled after ``<|start|>{role}``)
    into messages.  Lenient unless ``strict``; see :class:`StreamParser`."""
    p = StreamParser(role=role, strict=strict, tokenizer=tokenizer)
    for t in tokens:
        p.process(t)
    p.process_eos()
    return p.messages
