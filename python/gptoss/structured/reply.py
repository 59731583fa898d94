"""`ReplyConstraint`: one assistant reply, token by token, held to a `ReplyPlan`.

The reply starts right after the prompt's ``<|start|>assistant``. A small state machine follows
harmony's structure and hands each part to the right matcher:

    HEADER   header tokens up to <|message|>      llguidance matcher of the header grammar
    FREE     free content (reasoning, preamble,   a fixed mask: every text token + the end token;
             unconstrained final / tool call)      only <|end|> once the thinking budget is spent
    GRAMMAR  constrained content + its end token   llguidance matcher of a JSON grammar
    BETWEEN  after <|end|>                         only <|start|>
    DONE     after <|return|> or <|call|>          nothing

When a header is complete it is read with harmony's own `StreamParser` (the parser `chat` uses),
so the constraint and the reply's consumer agree on each message's channel and recipient.
"""

from __future__ import annotations

import copy
import enum
import threading
from typing import Any, Optional

import numpy as np

from ..tokenizer import N_TEXT_TOKENS as N_TEXT  # ids below are text; the rest are special
from .constraint import ConstraintViolation, bitmask_words
from .headers import real_recipient
from .plan import CALL, END, MESSAGE, RETURN, START, ContentRule, ReplyPlan

__all__ = ["ReplyConstraint"]

_MAX_FORCED = 64


class _Seg(enum.Enum):
    HEADER = "header"
    FREE = "free"
    GRAMMAR = "grammar"
    BETWEEN = "between"
    DONE = "done"


_masks_lock = threading.Lock()
_masks: dict[tuple[int, tuple[int, ...], bool], np.ndarray] = {}


def _static_mask(vocab: int, ids: tuple[int, ...], text: bool) -> np.ndarray:
    """Read-only bitmask of `ids` (plus every text id when `text`), cached."""
    key = (vocab, ids, text)
    m = _masks.get(key)
    if m is None:
        bits = np.zeros(bitmask_words(vocab) * 32, np.bool_)
        if text:
            bits[:N_TEXT] = True
        bits[list(ids)] = True
        m = np.packbits(bits, bitorder="little").view(np.int32)
        m.flags.writeable = False
        with _masks_lock:
            _masks[key] = m
    return m


class ReplyConstraint:
    """Implements `TokenConstraint` for one harmony reply. Build it with `plan_reply` +
    ``ReplyConstraint(plan)`` (or `prepare_reply`). Not thread-safe: one caller at a time (the
    mask may be computed on a worker thread, but not while `advance` runs).

    thinking_tokens: analysis and preamble content tokens so far (what `thinking_token_budget`
        counts).
    channel / recipient: of the current message (None in a header).
    """

    def __init__(self, plan: ReplyPlan):
        self.plan = plan
        self.vocab_size = int(plan.lltok.vocab_size)
        self._words = bitmask_words(self.vocab_size)
        self.thinking_tokens = 0
        self.channel: Optional[str] = None
        self.recipient: Optional[str] = None
        self._first = True
        self._rule: Optional[ContentRule] = None
        self._grammar: Any = None
        self._forced: Optional[list[int]] = None
        self._header_tokens: list[int] = []
        self._begin_header()

    # ------------------------------------------------------------------ TokenConstraint
    @property
    def finished(self) -> bool:
        return self._seg is _Seg.DONE

    @property
    def mask_is_fixed(self) -> bool:
        """The next mask is a copy of a fixed one (free text, between messages): microseconds."""
        return self._seg is not _Seg.HEADER and self._seg is not _Seg.GRAMMAR

    @property
    def budget_spent(self) -> bool:
        b = self.plan.budget
        return b is not None and self.thinking_tokens >= b

    def advance(self, token: int) -> None:
        t = int(token)
        self._forced = None
        seg = self._seg
        if seg is _Seg.FREE:
            rule = self._rule
            if t == rule.end:
                self._end_message()
            elif 0 <= t < N_TEXT and not (rule.budgeted and self.budget_spent):
                if rule.budgeted:
                    self.thinking_tokens += 1
            else:
                self._violation(t)
        elif seg is _Seg.HEADER:
            if not self._matcher.consume_token(t):
                self._violation(t)
            self._header_tokens.append(t)
            if t == MESSAGE:
                self._open_content()
        elif seg is _Seg.GRAMMAR:
            if not self._grammar.consume_token(t):
                self._violation(t)
            if t == self._rule.end:
                self._end_message()
        elif seg is _Seg.BETWEEN:
            if t != START:
                self._violation(t)
            self._begin_header()
        else:
            raise ConstraintViolation(f"token {t} after the end of the reply")

    def fill_bitmask(self, out: np.ndarray) -> None:
        if out.dtype != np.int32 or out.ndim != 1 or out.size < self._words \
                or not out.flags.c_contiguous:
            raise ValueError(f"the bitmask must be a contiguous int32 array of {self._words} words")
        seg = self._seg
        if seg is _Seg.HEADER or seg is _Seg.GRAMMAR:
            m = self._matcher if seg is _Seg.HEADER else self._grammar
            m.unsafe_compute_mask_ptr(out.ctypes.data, self._words * 4)  # drops the GIL
            if m.is_error():
                raise RuntimeError(f"the constraint failed: {m.get_error()}")
            return
        if seg is _Seg.FREE:
            rule = self._rule
            src = _static_mask(self.vocab_size, (END,), False) \
                if rule.budgeted and self.budget_spent else \
                _static_mask(self.vocab_size, (rule.end,), True)
        elif seg is _Seg.BETWEEN:
            src = _static_mask(self.vocab_size, (START,), False)
        else:
            src = _static_mask(self.vocab_size, (), False)
        out[: self._words] = src

    def bitmask(self) -> np.ndarray:
        out = np.empty(self._words, np.int32)
        self.fill_bitmask(out)
        return out

    def forced_tokens(self) -> list[int]:
        if self._forced is None:
            self._forced = self._compute_forced()
        return list(self._forced)

    # ------------------------------------------------------------------ internals
    def _violation(self, t: int) -> None:
        where = {_Seg.HEADER: "in a message header", _Seg.FREE: f"in {self.channel} content",
                 _Seg.GRAMMAR: f"in {self._rule.what if self._rule else ''} content",
                 _Seg.BETWEEN: "between messages (only <|start|> may follow <|end|>)"}[self._seg]
        raise ConstraintViolation(f"token {t} is not allowed {where}")

    def _begin_header(self) -> None:
        self._seg = _Seg.HEADER
        self._matcher = self.plan.header_matcher(self._first, self.budget_spent)
        self._header_tokens = [] if self._first else [START]
        self.channel = self.recipient = None
        self._rule = None
        self._grammar = None

    def _open_content(self) -> None:
        from ..harmony import MessageStart, StreamParser

        p = StreamParser(role="assistant" if self._first else None, tokenizer=self.plan.tokenizer)
        starts = [e for e in p.process_all(self._header_tokens) if isinstance(e, MessageStart)]
        if len(starts) != 1 or p.malformed:
            raise RuntimeError(f"the header grammar let through a malformed header: {p.errors}")
        self.channel, self.recipient = starts[0].channel, real_recipient(starts[0].recipient)
        self._rule = self.plan.rule(self.channel, self.recipient)
        self._first = False
        self._matcher = None
        if self._rule.grammar is not None:
            self._grammar = self.plan.content_matcher(self._rule)
            self._seg = _Seg.GRAMMAR
        else:
            self._seg = _Seg.FREE

    def _end_message(self) -> None:
        self._seg = _Seg.DONE if self._rule.end in (RETURN, CALL) else _Seg.BETWEEN
        self._grammar = None

    def _forced_here(self) -> list[int]:
        """Tokens the current part forces, without looking past it."""
        seg = self._seg
        if seg is _Seg.FREE:
            return [END] if self._rule.budgeted and self.budget_spent else []
        if seg is _Seg.BETWEEN:
            return [START]
        if seg is _Seg.HEADER:
            return list(self._matcher.compute_ff_tokens())
        if seg is _Seg.GRAMMAR:
            return list(self._grammar.compute_ff_tokens())
        return []

    def _compute_forced(self) -> list[int]:
        out: list[int] = []
        cur = self
        while len(out) < _MAX_FORCED:
            f = cur._forced_here()
            if not f:
                break
            if cur is self:
                cur = self._copy()
            for t in f:
                cur.advance(t)
                out.append(t)
                if cur.finished:
                    return out
        return out

    def _copy(self) -> "ReplyConstraint":
        c = copy.copy(self)
        c._header_tokens = list(self._header_tokens)
        if self._seg is _Seg.HEADER:
            c._matcher = self._matcher.deep_copy()
        if self._grammar is not None:
            c._grammar = self._grammar.deep_copy()
        c._forced = None
        return c

    def __repr__(self) -> str:
        return (f"ReplyConstraint(state={self._seg.value}, channel={self.channel!r}, "
                f"recipient={self.recipient!r}, thinking_tokens={self.thinking_tokens})")
