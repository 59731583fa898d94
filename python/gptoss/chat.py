"""Chat: render a conversation with harmony, generate, parse the reply as it streams.

    reply = chat(model, [{"role": "user", "content": "Hi"}], reasoning_effort="low")
    print(reply.content)                         # the final answer; reply.reasoning, .tool_calls

As in the ``openai`` SDK, the default (``stream=False``) returns the whole reply, a
`ChatResponse`: the list of parsed assistant messages (harmony `Message`s, ready to append to
the history) with ``.content``, ``.reasoning``, ``.tool_calls``, ``.usage`` and
``.finish_reason``. ``stream=True`` returns an iterator of events instead:

    for ev in chat(model, messages, stream=True):
        if isinstance(ev, ReasoningDelta): ...   # analysis channel text
        elif isinstance(ev, ContentDelta): ...   # final (or commentary preamble) text
        elif isinstance(ev, ToolCall): ...       # a complete function call, JSON arguments
        elif isinstance(ev, Done): ...           # usage and finish reason; ev.messages

Messages may be harmony `Message`s or OpenAI-style dicts:
``{"role": "system"|"developer"|"user"|"assistant"|"tool", "content": str}``; an assistant dict
may carry ``"reasoning"`` (analysis text) and ``"tool_calls"`` (``[{"id", "function": {"name",
"arguments"}}]``); a tool dict names its function with ``"name"`` or ``"tool_call_id"``.

The system message (identity, reasoning effort, channels) is generated unless the first message
is a harmony system message with `SystemContent`. A plain-string system or developer message
becomes the developer instructions; `instructions=` and `tools=` are added to them.

Multi-turn with tools: append the returned messages and a tool result (`tool_result`) to the
history and call again. Built-in tools (``builtin_tools=["python", "browser"]`` or `gptoss.tools`
objects) are run for you instead, in a loop that also streams `gptoss.tools.ToolOutput` events
(see `gptoss.tools.runner`). A `Conversation` does this bookkeeping. Each turn's prompt finds the
KV cache of what it shares with the previous one in the model's prefix cache (the whole
previous prompt plus the reply, except where harmony drops the analysis of a finished turn).

Vocabulary: rendering uses the o200k_harmony tokenizer (201088 ids). The model must have at least
as many logits as the prompt's largest id, otherwise a `ValueError` explains the mismatch (a
synthetic checkpoint for chat needs ``--vocab 201088``); ids the tokenizer does not know (a model
vocabulary larger than the tokenizer's) are never sampled.

Replies that are not valid harmony (a random synthetic model writes those) never raise: harmony's
lenient parser recovers what it can (text outside any header streams as `ContentDelta` with
``channel=None``), and a reply that never got past its first header is shown as raw text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

from .errors import ContextOverflowError
from .generate import GenerationStream, Usage, check_vocab, model_max_context
from .reply import ContentDelta, ReasoningDelta, ReplyStream, ToolCall
from .sampling import SamplingParams
from .structured import prepare_reply
from .tokenizer import CALL_ID

__all__ = [
    "ReasoningDelta",
    "ContentDelta",
    "ToolCall",
    "Done",
    "ChatResponse",
    "Conversation",
    "chat",
    "tool_result",
    "REASONING_EFFORTS",
]

REASONING_EFFORTS = ("low", "medium", "high")


# ---------------------------------------------------------------------------- events
@dataclass
class Done:
    """Last event. finish_reason: "stop" (<|return|>), "tool_calls" (<|call|>), "length"
    (max_tokens), "context_length" (the context is full), "cancelled", or with built-in tools
    "max_tool_steps" (the step limit stopped the loop)."""

    usage: Usage
    finish_reason: str
    messages: list = field(default_factory=list)
    tool_calls: list = field(default_factory=list)


ChatEvent = Union[ReasoningDelta, ContentDelta, ToolCall, Done]


class ChatResponse(list):
    """One whole reply: the list of its parsed assistant messages (harmony `Message`s, ready to
    append to the history), with `content` (the final answer), `reasoning` (the analysis
    channel), `tool_calls` (`ToolCall`s), `usage` and `finish_reason` (as `Done`)."""

    def __init__(self, messages: Iterable[Any], usage: Usage, finish_reason: str,
                 tool_calls: Sequence[ToolCall]):
        super().__init__(messages)
        self.usage = usage
        self.finish_reason = finish_reason
        self.tool_calls = list(tool_calls)

    def __str__(self) -> str:
        return self.content

    def __repr__(self) -> str:
        calls = ", ".join(f"{c.name}({c.arguments})" for c in self.tool_calls)
        return (f"ChatResponse(content={_short(self.content)!r}, reasoning={_short(self.reasoning)!r}, "
                f"tool_calls=[{calls}], finish_reason={self.finish_reason!r}, usage={self.usage})")

    @property
    def content(self) -> str:
        """Concatenated text of the final-channel (or unparsed) messages."""
        return "".join(_text_of(m) for m in self
                       if getattr(m, "channel", None) in ("final", None)
                       and not getattr(m, "recipient", None))

    @property
    def reasoning(self) -> str:
        return "".join(_text_of(m) for m in self if getattr(m, "channel", None) == "analysis")


def _short(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[:n] + "..."


# ---------------------------------------------------------------------------- harmony glue
def _harmony() -> Any:
    from . import harmony

    return harmony


def _text_of(msg: Any) -> str:
    c = getattr(msg, "content", "")
    if isinstance(c, str):
        return c
    if isinstance(c, (list, tuple)):  # list of content parts
        return "".join(p if isinstance(p, str) else str(getattr(p, "text", "")) for p in c)
    return str(getattr(c, "text", c))


def _tool(spec: Any) -> Any:
    h = _harmony()
    if isinstance(spec, h.Tool):
        return spec
    if isinstance(spec, Mapping):
        fn = spec.get("function", spec) if spec.get("type", "function") == "function" else spec
        if "name" not in fn:
            raise ValueError(f"tool definition without a name: {spec!r}")
        return h.Tool(name=fn["name"], description=fn.get("description", ""),
                      parameters=fn.get("parameters"))
    raise ValueError(f"a tool must be a harmony Tool or a dict with name/description/parameters, "
                     f"got {type(spec).__name__}")


def _message(m: Any, call_names: dict[str, str]) -> list[Any]:
    """One input message (harmony Message or OpenAI-style dict) as harmony Messages."""
    h = _harmony()
    if isinstance(m, h.Message):
        return [m]
    if not isinstance(m, Mapping):
        raise ValueError(f"a message must be a harmony Message or a dict, got {type(m).__name__}")
    role = m.get("role")
    if role not in ("system", "developer", "user", "assistant", "tool"):
        raise ValueError(f"unknown message role {role!r}")
    content = m.get("content")
    if content is None:
        content = ""
    if isinstance(content, list):  # OpenAI content parts
        content = "".join(p.get("text", "") if isinstance(p, Mapping) else str(p) for p in content)
    out: list[Any] = []
    if role == "assistant":
        reasoning = m.get("reasoning") or m.get("reasoning_content") or m.get("thinking")
        if reasoning:
            out.append(h.Message(role="assistant", content=str(reasoning), channel="analysis"))
        if content:
            out.append(h.Message(role="assistant", content=str(content),
                                 channel=m.get("channel", "final")))
        for tc in m.get("tool_calls") or ():
            fn = tc.get("function", tc)
            name = fn["name"]
            args = fn.get("arguments", "{}")
            if not isinstance(args, str):
                args = json.dumps(args)
            recipient = name if "." in name else f"functions.{name}"
            if tc.get("id"):
                call_names[tc["id"]] = recipient
            out.append(h.Message(role="assistant", content=args, channel="commentary",
                                 recipient=recipient, content_type="<|constrain|>json"))
        return out
    if role == "tool":
        name = m.get("name") or call_names.get(m.get("tool_call_id", ""), None)
        if not name:
            raise ValueError("a tool message needs 'name' (the function) or a 'tool_call_id' "
                             "that matches an earlier assistant tool call")
        author = name if "." in name else f"functions.{name}"
        if not isinstance(content, str):
            content = json.dumps(content)
        return [h.Message(role="tool", content=content, author_name=author, recipient="assistant",
                          channel=m.get("channel", "commentary"))]
    return [h.Message(role=role, content=content if role in ("system", "developer")
                      else str(content))]


def _role(msg: Any) -> str:
    r = getattr(msg, "role", "")
    return str(getattr(r, "value", r)).lower()


def build_messages(messages: Sequence[Any], *, reasoning_effort: str = "low",
                   instructions: Optional[str] = None, tools: Sequence[Any] = (),
                   current_date: Optional[str] = None) -> list[Any]:
    """The full harmony message list: system, developer (if any), then the conversation."""
    h = _harmony()
    if reasoning_effort not in REASONING_EFFORTS:
        raise ValueError(f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}, "
                         f"got {reasoning_effort!r}")
    call_names: dict[str, str] = {}
    msgs: list[Any] = []
    for m in messages:
        msgs.extend(_message(m, call_names))
    system = None
    if msgs and _role(msgs[0]) == "system" and isinstance(msgs[0].content, h.SystemContent):
        system, msgs = msgs[0], msgs[1:]
    dev_text: list[str] = []
    developer = None
    rest: list[Any] = []
    for m in msgs:
        r = _role(m)
        if r in ("system", "developer"):
            if isinstance(m.content, h.DeveloperContent):
                if developer is not None:
                    raise ValueError("more than one developer message with DeveloperContent")
                developer = m.content
            elif isinstance(m.content, h.SystemContent):
                raise ValueError("a system message with SystemContent must come first")
            elif str(m.content):
                dev_text.append(str(m.content))
        else:
            rest.append(m)
    if instructions:
        dev_text.append(instructions)
    tool_list = [_tool(t) for t in tools]
    if system is None:
        kw: dict[str, Any] = {"reasoning_effort": reasoning_effort}
        if current_date is not None:
            kw["current_date"] = current_date
        system = h.Message(role="system", content=h.SystemContent(**kw))
    out = [system]
    if developer is not None:
        if dev_text or tool_list:
            raise ValueError("pass instructions and tools either in a DeveloperContent message "
                             "or as arguments, not both")
        out.append(h.Message(role="developer", content=developer))
    elif dev_text or tool_list:
        out.append(h.Message(role="developer", content=h.DeveloperContent(
            instructions="\n\n".join(dev_text) or None, tools=tuple(tool_list))))
    return out + rest


def tool_result(call: Union[ToolCall, str], output: Any, *, channel: Optional[str] = None) -> Any:
    """The harmony message carrying a tool's output back to the model. `call` is the `ToolCall`
    (or the function name / recipient); non-string output is JSON-encoded."""
    h = _harmony()
    if isinstance(call, ToolCall):
        author = call.recipient or f"functions.{call.name}"
        channel = channel or call.channel or "commentary"
    else:
        author = call if "." in call else f"functions.{call}"
        channel = channel or "commentary"
    text = output if isinstance(output, str) else json.dumps(output)
    return h.Message(role="tool", content=text, author_name=author, recipient="assistant",
                     channel=channel)


def default_tokenizer(model: Any) -> Any:
    """The tokenizer of `model` (`Model.tokenizer`: the checkpoint folder's); FileNotFoundError
    saying what to do when it has none."""
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        return tok
    from .tokenizer import load_tokenizer

    path = getattr(model, "path", None) or getattr(model, "checkpoint_dir", None)
    try:
        return load_tokenizer(checkpoint_dir=path)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"chat needs the o200k_harmony tokenizer and this model has none ({e}). Pass "
            "tokenizer=gptoss.load_tokenizer(vocab_file=...) or Model(..., tokenizer=...); a "
            "synthetic checkpoint written with the full vocabulary (--vocab 201088) carries its own."
        ) from None


# ---------------------------------------------------------------------------- chat
def _render(messages: Sequence[Any], tokenizer: Any) -> list[int]:
    h = _harmony()
    return list(h.render(list(messages), for_completion=True, next_role="assistant",
                         tokenizer=tokenizer))


def chat(model: Any, messages: Sequence[Any], *, reasoning_effort: str = "low",
         tools: Sequence[Any] = (), instructions: Optional[str] = None, stream: bool = False,
         tokenizer: Any = None,
         sampling: Optional[SamplingParams] = None, current_date: Optional[str] = None,
         on_token: Optional[Callable[[int], None]] = None, builtin_tools: Any = (),
         max_tool_steps: Optional[int] = None, response_format: Any = None,
         tool_choice: Any = None, thinking_token_budget: Optional[int] = None,
         harmony_constraint: bool = False, **sampling_kwargs: Any):
    """Generate the assistant's reply to `messages` (at least one message).

    stream=False (default): a `ChatResponse` (the reply's parsed messages, content, usage).
    stream=True: an iterator of `ReasoningDelta`, `ContentDelta`, `ToolCall` and a final `Done`.
    The KV cache of what the prompt shares with earlier requests (a conversation's earlier
    turns, a system prompt) is found in the model's prefix cache: only the rest is computed.
    on_token: called with every generated token id before it is parsed (``--raw`` display).
    builtin_tools: "python", "browser", tool objects, or a `gptoss.tools.BuiltinTools`: declared
        in the system message and executed in a loop of at most `max_tool_steps` calls.
    sampling / **sampling_kwargs: `SamplingParams` fields (temperature, max_tokens, seed, ...).
        The default stop tokens are <|return|> and <|call|>.
    response_format / tool_choice / thinking_token_budget / harmony_constraint: structured outputs
        (OpenAI's shapes; see `gptoss.structured.plan`): the final answer held to a JSON schema,
        forced or forbidden tool calls (``strict`` tools get valid arguments), at most N reasoning
        tokens, well-formed harmony headers. The analysis channel is never constrained.
    All argument errors raise `ValueError` before any token is generated.
    """
    params = SamplingParams.merged(sampling, **sampling_kwargs)
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError("messages must be a list of messages (dicts like {'role': 'user', "
                         "'content': ...} or harmony Messages), got " + type(messages).__name__)
    if not messages:
        raise ValueError("messages is empty: give at least one message, e.g. "
                         "[{'role': 'user', 'content': 'Hello'}]")
    if builtin_tools:
        if response_format is not None or tool_choice is not None or harmony_constraint \
                or thinking_token_budget is not None:
            raise ValueError("response_format, tool_choice, thinking_token_budget and "
                             "harmony_constraint do not work with builtin_tools yet")
        from .tools.runner import DEFAULT_MAX_TOOL_STEPS, chat_with_tools

        return chat_with_tools(
            model, messages, builtin_tools=builtin_tools, stream=stream,
            max_tool_steps=DEFAULT_MAX_TOOL_STEPS if max_tool_steps is None else max_tool_steps,
            reasoning_effort=reasoning_effort, current_date=current_date, tokenizer=tokenizer,
            tools=tools, instructions=instructions, sampling=params, on_token=on_token)
    tok = tokenizer if tokenizer is not None else default_tokenizer(model)
    full = build_messages(messages, reasoning_effort=reasoning_effort, instructions=instructions,
                          tools=tools, current_date=current_date)
    full, constraint = prepare_reply(full, tok, tools=tools, response_format=response_format,
                                     tool_choice=tool_choice, harmony_constraint=harmony_constraint,
                                     thinking_token_budget=thinking_token_budget)
    prompt = _render(full, tok)
    check_vocab(model, prompt, tok)
    _check_room(model, full, prompt, tok)
    stops = tuple(params.stop or ())  # matched in the text for the user only (reply.py)
    gen = GenerationStream(model, prompt, SamplingParams.merged(params, stop=()) if stops else params,
                           vocab_limit=getattr(tok, "n_vocab", None), constraint=constraint)
    events = _events(gen, tok, on_token, stops)
    if stream:
        return events
    done: Optional[Done] = None
    for ev in events:
        if isinstance(ev, Done):
            done = ev
    assert done is not None
    return ChatResponse(done.messages, done.usage, done.finish_reason, done.tool_calls)


def _check_room(model: Any, full: Sequence[Any], prompt: Sequence[int], tokenizer: Any) -> None:
    """ContextOverflowError, before anything runs, when the prompt leaves no room for a reply."""
    max_ctx = model_max_context(model)
    if max_ctx is None or len(prompt) < max_ctx:
        return
    head = [m for m in full if _role(m) in ("system", "developer")]
    n_head = len(_harmony().render(head, tokenizer=tokenizer)) if head else 0
    raise ContextOverflowError(
        f"the prompt is {len(prompt)} tokens but the context holds {max_ctx}, which leaves no room "
        f"for a reply; the system and developer messages alone (reasoning effort, instructions, "
        f"tools) are {n_head} tokens. Use a longer context (Model(max_context=N), `gptoss chat "
        f"--context N` with N well above {len(prompt)}) or shorter messages.")


def _events(gen: GenerationStream, tokenizer: Any, on_token: Optional[Callable[[int], None]] = None,
            stops: tuple = ()) -> Iterator[ChatEvent]:
    call_id = getattr(tokenizer, "call", CALL_ID)
    rp = ReplyStream(tokenizer, stop=stops)
    last: Optional[int] = None
    try:
        for chunk in gen:
            last = chunk.token
            if on_token is not None:
                on_token(chunk.token)
            for ev in rp.feed(chunk.token):
                if isinstance(ev, (ReasoningDelta, ContentDelta, ToolCall)):  # not the call's pieces
                    yield ev
            if rp.stopped is not None:
                break
    finally:
        gen.close()
    res = gen.result
    assert res is not None
    finish = "stop" if rp.stopped is not None else res.finish_reason
    if rp.stopped is not None:
        pass
    elif finish != "stop":
        yield from (ev for ev in rp.finish() if isinstance(ev, (ReasoningDelta, ContentDelta, ToolCall)))
    elif last == call_id or (rp.tool_calls and res.stop_reason == call_id):
        finish = "tool_calls"
    yield Done(usage=res.usage, finish_reason=finish, messages=rp.messages(),
               tool_calls=list(rp.tool_calls))


# ---------------------------------------------------------------------------- conversation
class Conversation:
    """A multi-turn chat that keeps its history and its KV cache.

        conv = Conversation(model, reasoning_effort="low", tools=[...], temperature=0.7)
        reply = conv.send("What's the weather in Paris?")     # a ChatResponse
        for call in reply.tool_calls:
            conv.add_tool_result(call, {"temp": 20})
        for ev in conv.send(stream=True): ...   # continue after the tool result, streamed
        conv.close()

    Each reply's parsed messages are appended to `messages` once it is complete (streamed
    replies: when the iterator is exhausted). With `builtin_tools` the conversation keeps one
    set of tools (one python sandbox, one browser page stack) for all its turns, closed by
    `close`.
    """

    def __init__(self, model: Any, *, messages: Sequence[Any] = (), tokenizer: Any = None,
                 reasoning_effort: str = "low", instructions: Optional[str] = None,
                 tools: Sequence[Any] = (), current_date: Optional[str] = None,
                 sampling: Optional[SamplingParams] = None, builtin_tools: Sequence[Any] = (),
                 max_tool_steps: Optional[int] = None, **sampling_kwargs: Any):
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer(model)
        self.messages: list[Any] = list(messages)
        self.reasoning_effort = reasoning_effort
        self.instructions = instructions
        self.tools = list(tools)
        self.current_date = current_date
        self.sampling = SamplingParams.merged(sampling, **sampling_kwargs)
        self.usage = Usage()
        self.last_usage = Usage()
        # Validate now rather than on the first send.
        build_messages([], reasoning_effort=reasoning_effort, instructions=instructions,
                       tools=self.tools, current_date=current_date)
        self.builtin_tools = None
        self.max_tool_steps = max_tool_steps
        if builtin_tools:
            from .tools.runner import BuiltinTools

            self.builtin_tools = BuiltinTools(builtin_tools, tokenizer=self.tokenizer)

    def add_user(self, content: str) -> None:
        self.messages.append(_harmony().Message(role="user", content=content))

    def add_tool_result(self, call: Union[ToolCall, str], output: Any) -> None:
        self.messages.append(tool_result(call, output))

    def send(self, content: Optional[str] = None, *, stream: bool = False,
             on_token: Optional[Callable[[int], None]] = None, response_format: Any = None,
             tool_choice: Any = None, thinking_token_budget: Optional[int] = None,
             harmony_constraint: bool = False, **overrides: Any):
        """Add a user message (if given) and generate the reply; like `chat` otherwise
        (``stream=False``: a `ChatResponse`; ``stream=True``: an iterator of events)."""
        if content is not None:
            self.add_user(content)
        if not self.messages:
            raise ValueError("nothing to reply to: send a message first, e.g. conv.send('Hello')")
        params = SamplingParams.merged(self.sampling, **overrides)
        events = chat(self.model, self.messages, reasoning_effort=self.reasoning_effort,
                      tools=self.tools, instructions=self.instructions, stream=True,
                      tokenizer=self.tokenizer, sampling=params,
                      current_date=self.current_date, on_token=on_token,
                      builtin_tools=self.builtin_tools, max_tool_steps=self.max_tool_steps,
                      response_format=response_format, tool_choice=tool_choice,
                      thinking_token_budget=thinking_token_budget,
                      harmony_constraint=harmony_constraint)
        it = self._record(events)
        if stream:
            return it
        done: Optional[Done] = None
        for ev in it:
            if isinstance(ev, Done):
                done = ev
        assert done is not None
        return ChatResponse(done.messages, done.usage, done.finish_reason, done.tool_calls)

    def _record(self, events: Iterator[ChatEvent]) -> Iterator[ChatEvent]:
        for ev in events:
            if isinstance(ev, Done):
                self.messages.extend(ev.messages)
                self.usage = self.usage + ev.usage
                self.last_usage = ev.usage
            yield ev

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens of the last turn found in the prefix cache (not computed again)."""
        return self.last_usage.cached_tokens

    def close(self) -> None:
        if self.builtin_tools is not None:
            self.builtin_tools.close()

    def __enter__(self) -> "Conversation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
