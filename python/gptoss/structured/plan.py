"""What a constrained reply may contain: its headers and, per message kind, its content.

`plan_reply` turns a request (the harmony messages it renders, its tools, `response_format`,
`tool_choice`, `thinking_token_budget`, `harmony_constraint`) into a `ReplyPlan`, or None when
nothing is asked for (the reply is then generated unconstrained, as before). All errors are
`ValueError`s raised here, before any token is generated; every grammar is compiled here.

Rules (harmony, spec section 6; `docs/format.md` of openai-harmony):

* Headers: ``<|channel|>C[ to=R][ CT]<|message|>`` (or `` to=R`` before ``<|channel|>``), C among
  the system message's valid channels. ``analysis``: reasoning (free text, counts toward the
  budget). ``commentary`` without a recipient: a preamble (free text), allowed unless a JSON
  `response_format` is asked for and no tool can be called. ``commentary to=functions.NAME``: a
  function call, ending in ``<|call|>``. Built-in tools (``browser.*``, ``python``) on
  ``analysis`` or ``commentary``. ``final``: the answer, ending in ``<|return|>``, either
  ``<|channel|>final<|message|>`` or ``<|channel|>final <|constrain|>json<|message|>``.
* `response_format` json: the final content is JSON matching the schema (json_object: an object);
  nothing else is held to it.
* `tool_choice` (any value) constrains tool calls: header ``... <|constrain|>json``, arguments a
  JSON object (matching ``parameters`` for a ``strict`` tool; strict tools are constrained even
  without `tool_choice`). "none": no recipient at all. "required": a function call instead of a
  final answer. A named function: only that one.
* `thinking_token_budget` N: after N tokens of reasoning (analysis content, and preamble
  content, so that the answer always comes) the message is closed and the next header is forced
  to the final channel or a function call the tool choice allows (no more analysis or
  preamble); 0 = neither at all.
* `harmony_constraint`: the header rules alone (contents free). They are implied by the others,
  which need to know which channel a message is on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from .formats import (FunctionSpec, OutputFormat, ToolChoice, check_budget, parse_response_format,
                      parse_tool_choice, parse_tools)
from ..tokenizer import CALL_ID, END_ID, MESSAGE_ID, RETURN_ID, START_ID
from .grammars import CONSTRAIN_JSON, HeaderOption, header_grammar, json_grammar, ll_tokenizer, matcher

__all__ = ["ReplyPlan", "ContentRule", "plan_reply", "END", "RETURN", "CALL", "START", "MESSAGE"]

RETURN, END, MESSAGE, START, CALL = RETURN_ID, END_ID, MESSAGE_ID, START_ID, CALL_ID
_CHANNELS = ("analysis", "commentary", "final")
_BUILTIN_CONTENT_TYPES = ("", "code", "json", CONSTRAIN_JSON)


@dataclass(frozen=True)
class ContentRule:
    """A message's content: free text (``grammar`` None) or a Lark grammar that ends with `end`."""

    end: int
    grammar: Optional[str] = None
    what: str = ""
    budgeted: bool = False  # counts toward thinking_token_budget


@dataclass
class ReplyPlan:
    tokenizer: Any
    lltok: Any
    headers: tuple[HeaderOption, ...]  # while the budget lasts (or without one)
    forced_headers: tuple[HeaderOption, ...]  # once it is spent: written canonically
    rules: dict[tuple[str, Optional[str]], ContentRule]
    budget: Optional[int] = None
    response_format: Optional[OutputFormat] = None
    tool_choice: Optional[ToolChoice] = None
    _grammars: dict = field(default_factory=dict)

    def header_matcher(self, first: bool, spent: bool) -> Any:
        """A matcher for the next header; `first`: right after the prompt's ``<|start|>assistant``
        (later headers begin with the role ``assistant`` after ``<|start|>``)."""
        key = (first, spent)
        g = self._grammars.get(key)
        if g is None:
            opts = self.forced_headers if spent else self.headers
            g = self._grammars[key] = header_grammar(opts, with_role=not first, canonical=spent)
        return matcher(self.lltok, g, "harmony header grammar")

    def content_matcher(self, rule: ContentRule) -> Any:
        assert rule.grammar is not None
        return matcher(self.lltok, rule.grammar, rule.what)

    def rule(self, channel: Optional[str], recipient: Optional[str]) -> ContentRule:
        r = self.rules.get((channel or "", recipient))
        if r is None:  # the header grammar admits only planned headers
            raise RuntimeError(f"no content rule for channel {channel!r}, recipient {recipient!r}")
        return r


def _namespaces(messages: Sequence[Any]) -> tuple[tuple[str, ...], list[Any], list[Any]]:
    """(valid channels, function Tools, other ToolNamespaces) declared by the messages."""
    from .. import harmony as h

    channels: tuple[str, ...] = _CHANNELS
    functions: list[Any] = []
    others: list[Any] = []
    for m in messages:
        c = getattr(m, "content", None)
        if isinstance(c, h.SystemContent):
            channels = tuple(c.valid_channels)
            others.extend(c.namespaces())
        elif isinstance(c, h.DeveloperContent):
            for ns in c.namespaces():
                if ns.name == "functions":
                    functions.extend(ns.tools)
                else:
                    others.append(ns)
    return channels, functions, others


def _recipients(ns: Any) -> list[str]:
    return [f"{ns.name}.{t.name}" for t in ns.tools] if ns.tools else [ns.name]


def plan_reply(messages: Sequence[Any], tokenizer: Any, *, tools: Sequence[Any] = (),
               response_format: Any = None, tool_choice: Any = None,
               thinking_token_budget: Any = None, harmony_constraint: bool = False
               ) -> Optional[ReplyPlan]:
    """The plan of a reply to `messages` (harmony messages, system and developer included), or
    None when no constraint is asked for. Raises `ValueError` for invalid or uncompilable input."""
    fmt = parse_response_format(response_format)
    choice = parse_tool_choice(tool_choice)
    budget = check_budget(thinking_token_budget)
    if not isinstance(harmony_constraint, bool):
        raise ValueError(f"harmony_constraint must be True or False, got {harmony_constraint!r}")
    specs = parse_tools(tools)
    channels, fn_tools, others = _namespaces(messages)
    functions: dict[str, FunctionSpec] = {}
    for t in fn_tools:
        functions[t.name] = specs.get(t.name) or FunctionSpec(t.name, t.parameters, False)
    for name in specs:
        if name not in functions:
            raise ValueError(f"tool {name!r} is not declared in the harmony messages")
    strict = any(f.strict for f in functions.values())
    if not (harmony_constraint or (fmt is not None and fmt.constrains) or choice is not None
            or budget is not None or strict):
        return None

    names = ", ".join(functions) or "none"
    mode = choice.mode if choice is not None else "auto"
    if mode == "required" and not functions:
        raise ValueError("tool_choice 'required' needs at least one function tool")
    if mode == "function" and choice.name not in functions:
        raise ValueError(f"tool_choice names function {choice.name!r}, which is not among the "
                         f"tools ({names})")
    callable_fns = {} if mode == "none" else \
        {choice.name: functions[choice.name]} if mode == "function" else dict(functions)
    builtins = [] if mode in ("none", "required", "function") else \
        [r for ns in others for r in _recipients(ns)]
    final_ok = mode not in ("required", "function")
    json_fmt = fmt is not None and fmt.constrains
    for c in (["final"] if final_ok else []) + (["commentary"] if callable_fns else []):
        if c not in channels:
            raise ValueError(f"the constraint needs the {c!r} channel, which the system message's "
                             f"valid channels ({', '.join(channels)}) leave out")

    headers: list[HeaderOption] = []
    forced: list[HeaderOption] = []
    rules: dict[tuple[str, Optional[str]], ContentRule] = {}
    if "analysis" in channels:
        headers.append(HeaderOption("analysis"))
        rules[("analysis", None)] = ContentRule(END, budgeted=True)
    if "commentary" in channels and (callable_fns or builtins or not json_fmt):
        headers.append(HeaderOption("commentary"))
        rules[("commentary", None)] = ContentRule(END, budgeted=True)
    for r in builtins:
        for c in ("analysis", "commentary"):
            if c in channels:
                headers.append(HeaderOption(c, r, _BUILTIN_CONTENT_TYPES))
                rules[(c, r)] = ContentRule(CALL)
    for name, f in callable_fns.items():
        r = f"functions.{name}"
        if choice is not None or f.strict:
            schema: Mapping[str, Any] = (f.parameters if f.parameters is not None else
                                         {"type": "object", "additionalProperties": False}) \
                if f.strict else {"type": "object"}
            rule = ContentRule(CALL, json_grammar(schema, "<|call|>"), f"tool {name!r} parameters")
            opt = HeaderOption("commentary", r, (CONSTRAIN_JSON,))
        else:
            rule = ContentRule(CALL)
            opt = HeaderOption("commentary", r, (CONSTRAIN_JSON, "", "json"))
        headers.append(opt)
        forced.append(opt)
        rules[("commentary", r)] = rule
    if final_ok:
        if json_fmt:
            what = "response_format " + (f"json_schema {fmt.name!r}" if fmt.kind == "json_schema"
                                         else "json_object")
            rule = ContentRule(RETURN, json_grammar(fmt.content_schema, "<|return|>"), what)
        else:
            rule = ContentRule(RETURN)
        opt = HeaderOption("final", None, ("", CONSTRAIN_JSON))
        headers.append(opt)
        forced.append(opt)
        rules[("final", None)] = rule

    plan = ReplyPlan(tokenizer, ll_tokenizer(tokenizer), tuple(headers), tuple(forced), rules,
                     budget, fmt, choice)
    # Compile everything now: a schema llguidance cannot handle is refused before generation.
    for r in rules.values():
        if r.grammar is not None:
            plan.content_matcher(r)
    spent0 = budget == 0
    plan.header_matcher(True, spent0)
    plan.header_matcher(False, spent0)
    if budget:
        plan.header_matcher(True, True)
        plan.header_matcher(False, True)
    return plan
