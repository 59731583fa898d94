"""What a client hands the engine loop (`Request`) and what comes back (`RequestOutput`).

A request is a prompt of token ids with its own `SamplingParams` (stop tokens and strings,
max_tokens, logprobs, seed); its outputs are chunks of newly generated tokens (with their text
when a tokenizer was given), the last one carrying the finish reason and the usage.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from .sampling import Sample, SamplingParams

__all__ = ["FinishReason", "Request", "RequestOutput", "Usage", "new_request_id"]


class FinishReason(str, enum.Enum):
    STOP = "stop"                      # a stop token or stop string
    LENGTH = "length"                  # max_tokens (or the KV cache cannot hold it any longer)
    CONTEXT_LENGTH = "context_length"  # the context is full
    CANCELLED = "cancelled"            # cancelled by the client (or closed early)
    ERROR = "error"                    # the engine failed; `RequestOutput.error` says why

    def __str__(self) -> str:
        return self.value


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV cache was reused, not recomputed

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.prompt_tokens + other.prompt_tokens,
                     self.completion_tokens + other.completion_tokens,
                     self.cached_tokens + other.cached_tokens)


_ids = itertools.count(1)


def new_request_id() -> str:
    return f"req-{next(_ids)}"


@dataclass
class Request:
    """One generation: `prompt` token ids, sampled with `sampling`.

    tokenizer: decodes the output into text (needed for stop strings).
    vocab_limit: never sample ids >= this (a tokenizer smaller than the model's vocabulary).
    constraint: a `gptoss.structured.TokenConstraint` the generated tokens must follow (sampled
        on the host, with its mask; tokens it forces are appended without a step each).
    """

    prompt: Sequence[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = field(default_factory=new_request_id)
    tokenizer: Any = None
    vocab_limit: Optional[int] = None
    constraint: Any = None


@dataclass(slots=True)
class RequestOutput:
    """New output of one request since its previous chunk.

    `tokens` are the ids generated since then (a stop token included, as the last one),
    `text` their decoded text (held back while it could be the start of a stop string),
    `logprobs` their `Sample`s when requested. The last chunk has `finished` set, with the
    `finish_reason`, `stop_reason` (the stop token id or stop string) and `usage`.
    """

    request_id: str
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: Optional[list[Sample]] = None
    finished: bool = False
    finish_reason: Optional[FinishReason] = None
    stop_reason: Any = None
    usage: Optional[Usage] = None
    error: Optional[BaseException] = None
