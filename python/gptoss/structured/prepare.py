"""One call for a chat front end: the prompt's messages and the reply's constraint."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

from .formats import OutputFormat, parse_response_format
from .plan import plan_reply
from .reply import ReplyConstraint

__all__ = ["prepare_reply", "with_response_format"]


def with_response_format(messages: Sequence[Any], fmt: Optional[OutputFormat]) -> list[Any]:
    """`messages` with a json_schema format added to the developer message's
    ``# Response Formats`` (harmony's way of telling the model the schema; a developer message is
    added after the system message when there is none). Other formats change nothing."""
    from .. import harmony as h

    msgs = list(messages)
    if fmt is None or fmt.kind != "json_schema":
        return msgs
    rf = h.ResponseFormat(name=fmt.name or "response", schema=fmt.schema or {},
                          description=fmt.description)
    for i, m in enumerate(msgs):
        if isinstance(getattr(m, "content", None), h.DeveloperContent):
            dev = m.content
            msgs[i] = dataclasses.replace(m, content=dataclasses.replace(
                dev, response_formats=tuple(dev.response_formats) + (rf,)))
            return msgs
    at = 1 if msgs and isinstance(getattr(msgs[0], "content", None), h.SystemContent) else 0
    msgs.insert(at, h.Message(role="developer", content=h.DeveloperContent(response_formats=(rf,))))
    return msgs


def prepare_reply(messages: Sequence[Any], tokenizer: Any, *, tools: Sequence[Any] = (),
                  response_format: Any = None, tool_choice: Any = None,
                  thinking_token_budget: Any = None, harmony_constraint: bool = False
                  ) -> tuple[list[Any], Optional[ReplyConstraint]]:
    """(messages to render, constraint or None) for a reply to the harmony `messages` (system and
    developer messages included, as `gptoss.chat.build_messages` makes them). See `plan_reply`
    for the rules; every error is a `ValueError` raised before generation."""
    fmt = parse_response_format(response_format)
    msgs = with_response_format(messages, fmt)
    plan = plan_reply(msgs, tokenizer, tools=tools, response_format=fmt, tool_choice=tool_choice,
                      thinking_token_budget=thinking_token_budget,
                      harmony_constraint=harmony_constraint)
    return msgs, (ReplyConstraint(plan) if plan is not None else None)
