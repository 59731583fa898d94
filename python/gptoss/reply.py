"""An assistant reply, token by token, as typed events: reasoning, visible text and tool calls.

`ReplyStream` feeds generated tokens to harmony's lenient `StreamParser` (which never raises:
bad headers, stray channels and truncated messages are recovered as best it can) and turns its
events into the events clients want, including a tool call's start (its id and name, as soon as
the header is read) and its argument text as it streams. A reply with no harmony structure at
all (a model that answers, or refuses, without any header) comes out as visible text.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from . import harmony
from .structured.headers import normalized_message, real_recipient

__all__ = ["ReasoningDelta", "ContentDelta", "ToolCallBegin", "ToolCallDelta", "ToolCall", "ReplyEvent",
           "ReplyStream", "new_call_id"]


@dataclass
class ReasoningDelta:
    """Text on the analysis channel (chain of thought: not for end users)."""

    text: str


@dataclass
class ContentDelta:
    """User-visible text: channel "final", "commentary" (a preamble before tool calls), or None
    (raw text from a reply that is not valid harmony)."""

    text: str
    channel: Optional[str] = "final"


@dataclass
class ToolCallBegin:
    """A tool call's header was read: its `index` in this reply, id and name are known."""

    index: int
    call_id: str
    name: str
    recipient: str


@dataclass
class ToolCallDelta:
    """More of a tool call's argument text."""

    index: int
    text: str


@dataclass
class ToolCall:
    """A complete tool call. `name` is the function name for ``functions.*`` recipients and the
    full recipient otherwise (``browser.search``, ``python``)."""

    name: str
    arguments: str  # JSON text, as the model wrote it
    call_id: str
    recipient: str = ""
    channel: Optional[str] = "commentary"
    index: int = 0

    def json(self) -> Any:
        """The arguments parsed as JSON (raises `ValueError` when the model wrote invalid JSON)."""
        return json.loads(self.arguments)


ReplyEvent = Union[ReasoningDelta, ContentDelta, ToolCallBegin, ToolCallDelta, ToolCall]


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _function_name(recipient: str) -> str:
    return recipient[len("functions."):] if recipient.startswith("functions.") else recipient


@dataclass
class ReplyStream:
    """Feed a reply's tokens (`feed`), then `finish` once generation ends.

    stop: stop strings, matched in the text for the user only (never in the reasoning or a tool
    call's arguments): the text ends right before the first one, `stopped` names it, and the
    caller ends generation. Text that may be the start of one is held back until it is not.
    """

    tokenizer: Any
    stop: tuple = ()
    stopped: Optional[str] = field(default=None, init=False)
    parser: harmony.StreamParser = field(init=False)
    tool_calls: list[ToolCall] = field(default_factory=list, init=False)
    reasoning_tokens: int = field(default=0, init=False)  # tokens spent on the analysis channel
    _extra: list = field(default_factory=list, init=False)
    _channel: Optional[str] = field(default=None, init=False)
    _recipient: Optional[str] = field(default=None, init=False)
    _call: Optional[ToolCallBegin] = field(default=None, init=False)
    _held: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.parser = harmony.StreamParser(role="assistant", strict=False, tokenizer=self.tokenizer)

    def feed(self, token: int) -> list[ReplyEvent]:
        if self.stopped is not None:
            return []
        p = self.parser
        before = p.state == "content" and p.current_channel == "analysis"
        events = self._convert(p.process(token))
        if before or (p.state == "content" and p.current_channel == "analysis"):
            self.reasoning_tokens += 1
        return events

    def finish(self) -> list[ReplyEvent]:
        """End of generation without a stop token (length limit, full context, cancel)."""
        out: list[ReplyEvent] = []
        p = self.parser
        if p.state == "header" and p.tokens and not p.messages and p.current_channel is None:
            # Nothing parsable (no <|message|> was ever written): show the raw text rather than
            # nothing; this is also how a refusal without channels looks.
            text = self.tokenizer.decode(p.tokens)
            if text:
                out.extend(self._release(text, flush=True))
                self._extra.append(harmony.Message(role="assistant", content=text))
        out.extend(self._convert(p.process_eos()))
        out.extend(self._release(flush=True))
        return out

    def _release(self, text: str = "", flush: bool = False) -> list[ReplyEvent]:
        """Visible text through the stop strings."""
        if not self.stop:
            return [ContentDelta(text, self._channel)] if text else []
        if self.stopped is not None:
            return []
        t = self._held + text
        hits = [(t.find(s), s) for s in self.stop if s in t]
        if hits:
            i, s = min(hits)
            self._held, self.stopped = "", s
            return [ContentDelta(t[:i], self._channel)] if i else []
        keep = 0
        if not flush:
            for s in self.stop:
                for k in range(min(len(s) - 1, len(t)), keep, -1):
                    if t.endswith(s[:k]):
                        keep = k
                        break
        self._held = t[len(t) - keep:] if keep else ""
        out = t[:len(t) - keep]
        return [ContentDelta(out, self._channel)] if out else []

    def messages(self) -> list:
        """The reply's parsed messages (harmony `Message`s), ready to go back into a history (the
        text a stop string ended without it)."""
        msgs = [normalized_message(m) for m in self.parser.messages] + self._extra
        if self.stopped is not None:
            for i in range(len(msgs) - 1, -1, -1):
                text = msgs[i].text if isinstance(msgs[i].content, str) or hasattr(msgs[i], "text") else ""
                if self.stopped in text:
                    msgs[i] = dataclasses.replace(msgs[i], content=text[:text.index(self.stopped)])
                    break
        return msgs

    def _convert(self, events: list) -> list[ReplyEvent]:
        out: list[ReplyEvent] = []
        for ev in events:
            if isinstance(ev, harmony.MessageStart):
                self._channel = ev.channel
                self._recipient = real_recipient(ev.recipient)  # "final <|constrain|>json": none
                if self._recipient is not None and ev.role == "assistant":
                    self._call = ToolCallBegin(len(self.tool_calls), new_call_id(),
                                               _function_name(self._recipient), self._recipient)
                    out.append(self._call)
            elif isinstance(ev, harmony.ContentDelta):
                if self._call is not None:
                    out.append(ToolCallDelta(self._call.index, ev.text))
                elif self._recipient is not None:
                    continue  # a message to someone else than the user (not a call of ours)
                elif self._channel == "analysis":
                    out.append(ReasoningDelta(ev.text))
                else:
                    out.extend(self._release(ev.text))
            elif isinstance(ev, harmony.MessageEnd):
                out.extend(self._release(flush=True))
                m = ev.message
                if self._call is not None:
                    call = ToolCall(name=self._call.name, arguments=m.text, call_id=self._call.call_id,
                                    recipient=self._call.recipient, channel=m.channel, index=self._call.index)
                    self.tool_calls.append(call)
                    out.append(call)
                self._channel = self._recipient = self._call = None
        return out
