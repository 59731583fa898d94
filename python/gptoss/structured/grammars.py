"""llguidance grammars for harmony replies: the tokenizer, message headers, JSON contents.

* `ll_tokenizer(tokenizer)`: llguidance's view of the o200k_harmony vocabulary (all 201088 ids,
  the special tokens by name), built once per tokenizer (~3 s) and cached.
* `header_grammar(options, with_role)`: a Lark grammar for one message header, from just after
  the role (or from ``assistant`` after a later ``<|start|>``) up to and including
  ``<|message|>``; each `HeaderOption` is one (channel, recipient, content types) combination.
* `json_grammar(schema, end)`: a JSON value that matches `schema`, then the special token `end`
  (``<|return|>`` for a final answer, ``<|call|>`` for tool arguments).
* `matcher(lltok, grammar, what)`: a fresh `llguidance.LLMatcher`; compiled grammars are cached
  (a repeated schema costs a copy, ~10 us) and a grammar llguidance cannot compile raises
  `ValueError` naming `what` and llguidance's reason.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from ..tokenizer import RETURN_ID

__all__ = ["ll_tokenizer", "HeaderOption", "header_grammar", "json_grammar", "matcher",
           "JSON_WHITESPACE", "CONSTRAIN_JSON"]

CONSTRAIN_JSON = "<|constrain|>json"

# Between JSON tokens at most one space: compact JSON and the `{"a": 1, "b": 2}` style the model
# writes both match, and a runaway of whitespace (a known failure of unbounded JSON whitespace)
# cannot happen.
JSON_WHITESPACE = " ?"
_JSON_OPTIONS = {"whitespace_pattern": JSON_WHITESPACE, "lenient": False, "coerce_one_of": False}


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("structured outputs need the llguidance package "
                          "(pip install llguidance==1.9.1)") from e
    return llguidance


# ---------------------------------------------------------------------------- tokenizer
# llguidance's "slices": token sets precomputed for lexemes that often allow all of them, so a
# mask can take a slice whole instead of walking the token trie. Its default has JSON string
# runs of 1-10, 1-30 and any length; strings bounded by maxLength leave fewer characters than
# that, so shorter runs are added (the masks are the same; measured on o200k with a schema of
# bounded strings: p90 of the mask 2.2 -> 0.9 ms; building the tokenizer 1.4 -> 2.7 s, once).
_STRING_CHAR = '[^"\\\\\\x00-\\x1F\\x7F]'
_SLICES = (['[\\x20\\x0A\\x0D\\x09]+']
           + [_STRING_CHAR + "{1,%d}" % n for n in (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 30)]
           + [_STRING_CHAR + "+"])
_tok_lock = threading.Lock()
_tok_cache: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def ll_tokenizer(tokenizer: Any) -> Any:
    """The `llguidance.LLTokenizer` of a gptoss `Tokenizer` (or a tiktoken `Encoding`), cached
    for the life of the encoding."""
    enc = getattr(tokenizer, "encoding", tokenizer)
    with _tok_lock:
        lt = _tok_cache.get(enc)
        if lt is None:
            from llguidance.tiktoken import lltokenizer_from_encoding

            _llguidance()
            # eos is never reached: every grammar here ends in an explicit harmony end token.
            lt = lltokenizer_from_encoding(enc, n_vocab=enc.n_vocab, eos_token=RETURN_ID,
                                           slices=_SLICES)
            _tok_cache[enc] = lt
    return lt


# ---------------------------------------------------------------------------- grammars
def _lit(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


@dataclass(frozen=True)
class HeaderOption:
    """One allowed header: channel, recipient (None: none), and the content types allowed after
    them ("" = none, `CONSTRAIN_JSON`, or a word such as "code"). `either_order` also accepts the
    recipient before ``<|channel|>`` (both are valid harmony; the parser reads either)."""

    channel: str
    recipient: Optional[str] = None
    content_types: tuple[str, ...] = ("",)
    either_order: bool = True


def _content_type(ct: str, canonical: bool) -> str:
    if ct == "":
        return ""
    if ct == CONSTRAIN_JSON:
        return '" " <|constrain|> "json"' if canonical else '" "? <|constrain|> "json"'
    return _lit(" " + ct)


def header_grammar(options: Sequence[HeaderOption], with_role: bool, canonical: bool = False) -> str:
    """Lark grammar of one header (see the module docstring). `canonical`: one spelling per
    option (recipient after the channel, ``" <|constrain|>json"``), so that a header the engine
    forces is forced whole."""
    if not options:
        raise ValueError("no harmony header is allowed here")
    rules = []
    for i, o in enumerate(options):
        chan = f'<|channel|> {_lit(o.channel)}'
        if o.recipient is None:
            head = chan
        else:
            to = _lit(" to=" + o.recipient)
            head = f"{chan} {to}" if canonical or not o.either_order else \
                f"({chan} {to} | {to} {chan})"
        cts = [_content_type(c, canonical) for c in (o.content_types[:1] if canonical
                                                    else o.content_types)]
        alts = " | ".join(f"{head} {c}".rstrip() for c in cts)
        rules.append(f"h{i}: ({alts}) <|message|>")
    role = '"assistant" ' if with_role else ""
    return "start: " + role + "header\nheader: " + " | ".join(
        f"h{i}" for i in range(len(options))) + "\n" + "\n".join(rules) + "\n"


def json_grammar(schema: Mapping[str, Any], end: str) -> str:
    """Lark grammar: a JSON value matching `schema`, then the special token named `end`."""
    s = dict(schema)
    s["x-guidance"] = {**(s.get("x-guidance") or {}), **_JSON_OPTIONS}
    try:
        body = json.dumps(s, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the JSON schema is not valid JSON: {e}") from None
    return f"start: %json {body} {end}\n"


# ---------------------------------------------------------------------------- matchers
_CACHE_SIZE = 256
_m_lock = threading.Lock()
_m_cache: "OrderedDict[tuple[Any, str], tuple[Any, Optional[str]]]" = OrderedDict()


def _compile(lltok: Any, grammar: str) -> tuple[Any, Optional[str]]:
    ll = _llguidance()
    try:
        g = ll.LLMatcher.grammar_from_lark(grammar)
        m = ll.LLMatcher(lltok, g, log_level=0)
    except Exception as e:  # llguidance raises only on API misuse; report it the same way
        return None, str(e)
    if m.is_error():
        return None, m.get_error()
    return m, None


def matcher(lltok: Any, grammar: str, what: str) -> Any:
    """A fresh matcher for `grammar` (Lark), or `ValueError` "`what`: <llguidance's reason>"."""
    key = (lltok, grammar)
    with _m_lock:
        hit = _m_cache.get(key)
        if hit is not None:
            _m_cache.move_to_end(key)
    if hit is None:
        hit = _compile(lltok, grammar)  # outside the lock: compiling drops the GIL, takes ms
        with _m_lock:
            _m_cache[key] = hit
            while len(_m_cache) > _CACHE_SIZE:
                _m_cache.popitem(last=False)
    template, err = hit
    if err is not None:
        raise ValueError(f"{what}: cannot be compiled into a constraint: {_first_line(err)}")
    return template.deep_copy()


def _first_line(err: str) -> str:
    err = err.strip()
    # llguidance's messages can carry a dump of the grammar after the reason.
    return err if len(err) <= 500 else err[:500] + " ..."
