"""Rendering conversations to tokens, token-identical to ``openai-harmony``, with its rule for
dropping chain-of-thought."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..tokenizer import Tokenizer
from .messages import (CONSTRAIN, ROLES, DeveloperContent, HarmonyError, Message, ResponseFormat, SystemContent,
                       ToolNamespace, default_tokenizer)
from .typescript import json_schema_to_typescript, serde_json, split_lines


def _tools_section(namespaces: Sequence[ToolNamespace]) -> str:
    sections = ["# Tools"]
    for ns in namespaces:
        lines = [f"## {ns.name}\n"]
        if ns.description is not None:
            for line in split_lines(ns.description):
                lines.append(f"// {line}" if ns.tools else line)
        if ns.tools:
            lines.append(f"namespace {ns.name} {{\n")
            for tool in ns.tools:
                for line in split_lines(tool.description):
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
            body.extend(f"// {line}" for line in split_lines(f.description))
        body.append(serde_json(f.schema))
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
        if m.content_type.startswith(CONSTRAIN):
            # <|constrain|> must be the special token, not its text.
            out += text(" ")
            out.append(tok.constrain)
            rest = m.content_type[len(CONSTRAIN):]
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
