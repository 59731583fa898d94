"""Generated tokens as text: an incremental UTF-8 decoder with stop strings and hold-back.

A character split across tokens is released whole, and text that might be the start of a stop
string is held back until it is known not to be one.
"""

from __future__ import annotations

import codecs
from typing import Any, Optional, Sequence

__all__ = ["TextDecoder", "token_bytes"]


def token_bytes(tokenizer: Any, token: int) -> bytes:
    """Raw bytes of one token, for a tiktoken-like tokenizer or one with only `decode`."""
    enc = getattr(tokenizer, "encoding", None)
    for obj in (tokenizer, enc):
        fn = getattr(obj, "decode_single_token_bytes", None)
        if fn is not None:
            try:
                return bytes(fn(token))
            except (KeyError, ValueError, IndexError):
                return b""
    for obj in (tokenizer, enc):
        fn = getattr(obj, "decode_bytes", None)
        if fn is not None:
            try:
                return bytes(fn([token]))
            except (KeyError, ValueError, IndexError):
                return b""
    try:
        return str(tokenizer.decode([token])).encode("utf-8")
    except (KeyError, ValueError, IndexError):
        return b""


class TextDecoder:
    """Incremental detokenizer with stop-string detection and hold-back."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.full = ""  # all decoded text so far
        self.released = 0  # len of the prefix of `full` already handed out
        self._checked = 0  # `full[:_checked]` was already searched for stop strings
        self.stopped: Optional[str] = None  # the stop string found
        self.end: Optional[int] = None  # where the text ends when a stop string was found

    def push(self, token: int) -> str:
        """Add one token; return the newly released text."""
        if self.stopped is not None:
            return ""
        self.full += self._utf8.decode(token_bytes(self.tokenizer, token))
        return self._release()

    def flush(self) -> str:
        """End of generation: release everything held back (incomplete bytes become U+FFFD)."""
        if self.stopped is None:
            self.full += self._utf8.decode(b"", final=True)
            out = self.full[self.released:]
            self.released = len(self.full)
            return out
        return ""

    @property
    def text(self) -> str:
        return self.full[: self.end] if self.end is not None else self.full

    def _release(self) -> str:
        if self.stop:
            longest = max(len(s) for s in self.stop)
            start = max(0, self._checked - longest + 1)
            best: Optional[tuple[int, str]] = None
            for s in self.stop:
                i = self.full.find(s, start)
                if i >= 0 and (best is None or i < best[0]):
                    best = (i, s)
            self._checked = len(self.full)
            if best is not None:
                self.end, self.stopped = best
                out = self.full[self.released: self.end]
                self.released = self.end
                return out
            hold = 0
            for s in self.stop:
                for k in range(min(len(s) - 1, len(self.full)), hold, -1):
                    if self.full.endswith(s[:k]):
                        hold = k
                        break
            upto = len(self.full) - hold
        else:
            upto = len(self.full)
        out = self.full[self.released: upto]
        self.released = max(self.released, upto)
        return out
