"""Parsing model output back into messages: incremental (:class:`StreamParser`, one token at
a time) and lenient unless ``strict``."""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from ..tokenizer import N_VOCAB, Tokenizer
from .messages import CHANNEL, CONSTRAIN, ROLES, HarmonyError, Message, default_tokenizer


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
    idx = header.find(CHANNEL)
    if idx >= 0:
        after = header[idx + len(CHANNEL):]
        end = next((k for k, c in enumerate(after) if c in _UNICODE_WS or c == "<"), len(after))
        if end == 0:
            problems.append("channel marker present but no channel value found in header")
        else:
            channel = after[:end]
        header = header[:idx] + after[end:]
    header = _trim(header)
    if CONSTRAIN in header:
        # "to=x<|constrain|>json" -> "to=x <|constrain|>json"
        header = _trim(header.replace(CONSTRAIN, " " + CONSTRAIN))
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
