"""Harmony chat format for gpt-oss: rendering conversations to tokens and
parsing model output back into messages (spec section 6).

The parts: ``messages`` (the data model), ``typescript`` (tool schemas as harmony writes them),
``render`` and ``parse``.

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

from .messages import (BROWSER, PYTHON, ROLES, DeveloperContent, HarmonyError, Message, ReasoningEffort,
                       ResponseFormat, Role, SystemContent, Tool, ToolNamespace, default_tokenizer)
from .parse import ContentDelta, Event, MessageEnd, MessageStart, StreamParser, parse
from .render import render, render_for_training, render_message
from .typescript import json_schema_to_typescript

__all__ = [
    "HarmonyError",
    "Role",
    "ROLES",
    "ReasoningEffort",
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
