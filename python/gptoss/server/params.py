"""Request bodies read field by field: every value checked, every error naming its field.

A field the server does not know is refused (as OpenAI does: "Unrecognized request argument"),
a field it knows but does not support yet is refused naming it, and only fields that cannot
change the output (``user``, ``metadata``, ...) are accepted and ignored. Nothing is silently
dropped.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Optional

from ..sampling import SamplingParams
from .errors import APIError, invalid

__all__ = ["Body", "sampling_params", "REASONING_EFFORTS"]

REASONING_EFFORTS = ("low", "medium", "high")
_MISSING = object()


class Body:
    """The fields of one JSON request body. `take_*` reads a field (None when absent);
    `done()` refuses whatever was not read."""

    def __init__(self, data: Any, *, ignored: Iterable[str] = (), unsupported: Optional[Mapping[str, str]] = None):
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object")
        self.data = data
        self._seen: set[str] = set(ignored) & set(data)
        self._unsupported = dict(unsupported or {})

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: str, default: Any = None) -> Any:
        self._seen.add(key)
        v = self.data.get(key, _MISSING)
        return default if v is _MISSING or v is None else v

    def take_str(self, key: str, *, required: bool = False, choices: Optional[Iterable[str]] = None) -> Optional[str]:
        v = self.raw(key)
        if v is None:
            if required:
                raise invalid(key, f"'{key}' is required", code="missing_required_parameter")
            return None
        if not isinstance(v, str):
            raise invalid(key, f"'{key}' must be a string, got {type(v).__name__}", code="invalid_type")
        if choices is not None and v not in tuple(choices):
            raise invalid(key, f"'{key}' must be one of {', '.join(map(repr, choices))}, got {v!r}")
        return v

    def take_bool(self, key: str, default: bool = False) -> bool:
        v = self.raw(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise invalid(key, f"'{key}' must be a boolean, got {v!r}", code="invalid_type")
        return v

    def take_int(self, key: str, lo: Optional[int] = None, hi: Optional[int] = None) -> Optional[int]:
        v = self.raw(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise invalid(key, f"'{key}' must be an integer, got {v!r}", code="invalid_type")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise invalid(key, f"'{key}' must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}")
        return v

    def take_float(self, key: str, lo: float, hi: float, *, lo_open: bool = False) -> Optional[float]:
        v = self.raw(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise invalid(key, f"'{key}' must be a number, got {v!r}", code="invalid_type")
        if v < lo or v > hi or (lo_open and v == lo):
            raise invalid(key, f"'{key}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
        return float(v)

    def take_list(self, key: str, *, required: bool = False) -> Optional[list]:
        v = self.raw(key)
        if v is None:
            if required:
                raise invalid(key, f"'{key}' is required", code="missing_required_parameter")
            return None
        if not isinstance(v, list):
            raise invalid(key, f"'{key}' must be an array, got {type(v).__name__}", code="invalid_type")
        return v

    def take_dict(self, key: str) -> Optional[dict]:
        v = self.raw(key)
        if v is None:
            return None
        if not isinstance(v, dict):
            raise invalid(key, f"'{key}' must be an object, got {type(v).__name__}", code="invalid_type")
        return v

    def done(self) -> None:
        for key in self.data:
            if key in self._seen:
                continue
            if key in self._unsupported:
                raise invalid(key, f"'{key}' is not supported by this server yet: {self._unsupported[key]}",
                              code="unsupported_parameter")
            raise invalid(key, f"Unrecognized request argument supplied: {key}", code="unknown_parameter")


def _stop(body: Body) -> Optional[list[str]]:
    v = body.raw("stop")
    if v is None:
        return None
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v) or len(v) > 16:
        raise invalid("stop", "'stop' must be a non-empty string or an array of up to 16 of them")
    return v


def _logit_bias(body: Body) -> Optional[dict[int, float]]:
    v = body.take_dict("logit_bias")
    if v is None:
        return None
    out = {}
    for k, b in v.items():
        if not re.fullmatch(r"\d+", str(k)):
            raise invalid("logit_bias", f"'logit_bias' keys must be token ids, got {k!r}")
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not -100 <= b <= 100:
            raise invalid("logit_bias", f"'logit_bias' values must be numbers in [-100, 100], got {b!r}")
        out[int(k)] = float(b)
    return out


def sampling_params(body: Body, *, max_tokens: Optional[int], stop_token_ids: Iterable[int],
                    logprobs: Optional[int] = None, tokenizer_vocab: Optional[int] = None) -> SamplingParams:
    """The sampling fields every endpoint shares, as `SamplingParams`."""
    top_k = body.take_int("top_k", -1)
    bias = _logit_bias(body)
    if bias and tokenizer_vocab is not None:
        bad = [t for t in bias if t >= tokenizer_vocab]
        if bad:
            raise invalid("logit_bias", f"'logit_bias' token id {bad[0]} is outside the vocabulary ({tokenizer_vocab})")
    kw: dict[str, Any] = dict(
        temperature=body.take_float("temperature", 0.0, 2.0), top_p=body.take_float("top_p", 0.0, 1.0, lo_open=True),
        min_p=body.take_float("min_p", 0.0, 1.0), presence_penalty=body.take_float("presence_penalty", -2.0, 2.0),
        frequency_penalty=body.take_float("frequency_penalty", -2.0, 2.0),
        repetition_penalty=body.take_float("repetition_penalty", 0.0, 10.0, lo_open=True),
        seed=body.take_int("seed", 0, 2 ** 63 - 1), stop=_stop(body), logit_bias=bias)
    kw = {k: v for k, v in kw.items() if v is not None}
    if top_k is not None and top_k > 0:
        kw["top_k"] = top_k
    try:
        return SamplingParams(max_tokens=max_tokens, stop_token_ids=tuple(stop_token_ids), logprobs=logprobs, **kw)
    except ValueError as e:  # a combination SamplingParams refuses
        m = re.search(r"parameter (\w+)=", str(e))
        raise invalid(m.group(1) if m else None, str(e)) from None
