"""`Guide`: a `TokenConstraint` inside a one-token-at-a-time decode loop (`GenerationStream`).

With ``overlap`` each engine step runs with the next position's mask (and forced tokens)
computed alongside on a worker thread: the engine and llguidance both drop the GIL, so the mask
costs nothing when it takes less time than the step. Forced tokens are taken as they are, without a draw (with
``logprobs`` asked for, through the sampler on a one-hot mask: the model's own log-probabilities).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..sampling import Sample
from .constraint import TokenConstraint, bitmask_words, onehot_bitmask

__all__ = ["Guide", "mask_executor"]

_pool: Optional[ThreadPoolExecutor] = None
_pool_lock = threading.Lock()


def mask_executor() -> ThreadPoolExecutor:
    """The shared worker threads that compute masks during engine steps."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gptoss-mask")
    return _pool


class Guide:
    """overlap: compute the next mask on a worker thread during the engine step. Right when the
    step leaves the host idle (a GPU step); on a CPU engine the step's threads already use every
    core, and one more thread slows the step more than the mask costs, so there the mask is
    computed after the step. Masks that are fixed (free text) are always just copied."""

    def __init__(self, constraint: TokenConstraint, overlap: bool = False):
        self.constraint = constraint
        self.overlap = overlap
        self.mask = np.empty(bitmask_words(constraint.vocab_size), np.int32)
        self._forced: Optional[list[int]] = None

    @classmethod
    def for_model(cls, constraint: TokenConstraint, model: Any) -> "Guide":
        dev = str(getattr(model, "device", "cpu"))
        return cls(constraint, overlap=dev.startswith("cuda") and not dev.startswith("cuda-emu"))

    def _prepare(self) -> list[int]:
        self.constraint.fill_bitmask(self.mask)
        return self.constraint.forced_tokens()

    def _alongside(self, step: Callable[..., Any], *args: Any) -> Any:
        if not self.overlap or getattr(self.constraint, "mask_is_fixed", False):
            out = step(*args)
            self._forced = self._prepare()
            return out
        fut: Future = mask_executor().submit(self._prepare)
        try:
            out = step(*args)
        except BaseException:
            fut.exception()  # wait: the worker must be done with the constraint
            raise
        self._forced = fut.result()
        return out

    def prefill(self, session: Any, prompt: Sequence[int]) -> Any:
        """``session.prefill(prompt)`` with the first mask computed alongside."""
        return self._alongside(session.prefill, prompt)

    def decode(self, session: Any, token: int) -> Any:
        """Accept `token`, then ``session.decode(token)`` with the next mask computed alongside."""
        self.constraint.advance(token)
        return self._alongside(session.decode, token)

    def sample(self, sampler: Any, logits: np.ndarray, generated: Sequence[int],
               prompt: Sequence[int]) -> Any:
        """The next token: the first forced one, else a draw among the allowed ids."""
        if self.constraint.finished:
            raise ValueError("the constrained reply is complete (after <|return|> or <|call|>) but "
                             "generation goes on: keep those among stop_token_ids")
        forced = self._forced if self._forced is not None else self._prepare()
        self._forced = None
        if not forced:
            return sampler.sample(logits, generated, prompt, allowed=self.mask)
        if sampler.params.logprobs is None:
            return Sample(forced[0])  # no draw
        # the sampler on a one-hot mask: the model's own log-probabilities, as for any token
        return sampler.sample(logits, generated, prompt,
                              allowed=onehot_bitmask(forced[0], self.constraint.vocab_size))
