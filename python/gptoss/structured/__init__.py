"""Structured outputs, forced tool calls and a reasoning budget, constrained only where harmony
allows.

A reply is held to its request by a per-request `TokenConstraint` (`ReplyConstraint`): the
analysis channel stays free text; `response_format` constrains only the final channel's content;
`tool_choice` and ``strict`` tools constrain tool-call headers and arguments;
`thinking_token_budget` closes the reasoning after N tokens; `harmony_constraint` keeps headers
well-formed. Grammars are compiled by llguidance. See `plan` for the rules, `constraint` for the
interface a decode loop drives, `prepare_reply` for the one call a chat front end makes.
"""

from .constraint import ConstraintViolation, TokenConstraint, allowed_ids, bitmask_words, onehot_bitmask
from .driver import mask_executor
from .formats import (FunctionSpec, OutputFormat, ToolChoice, parse_response_format, parse_tool_choice,
                      parse_tools)
from .grammars import ll_tokenizer
from .plan import ReplyPlan, plan_reply
from .prepare import prepare_reply, with_response_format
from .reply import ReplyConstraint

__all__ = [
    "TokenConstraint",
    "ConstraintViolation",
    "ReplyConstraint",
    "ReplyPlan",
    "plan_reply",
    "prepare_reply",
    "with_response_format",
    "OutputFormat",
    "ToolChoice",
    "FunctionSpec",
    "parse_response_format",
    "parse_tool_choice",
    "parse_tools",
    "ll_tokenizer",
    "mask_executor",
    "bitmask_words",
    "allowed_ids",
    "onehot_bitmask",
]
