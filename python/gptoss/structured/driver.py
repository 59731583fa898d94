"""`Guide`: a `TokenConstraint` inside a one-token-at-a-time decode loop (`GenerationStream`).

Each engine step runs with the next position's mask (and forced tokens) computed alongside on a
worker thread: the engine and llguidance both drop the GIL, so the mask costs nothing when it
takes less time than the step. Forced tokens are taken as they are (the sampler sees a one-hot
mask, so log-probabilities, when asked for, are still the model's).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence

import numpy as np

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
    def __init__(self, constraint: TokenConstraint):
        self.constraint = constraint
        self.mask = np.empty(bitmask_words(constraint.vocab_size), np.int32)
        self._forced: Optional[list[int]] = None

    def _prepare(self) -> list[int]:
        self.constraint.fill_bitmask(self.mask)
        return self.constraint.forced_tokens()

    def _alongside(self, step: Callable[..., Any], *args: Any) -> Any:
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
        allowed = onehot_bitmask(forced[0], self.constraint.vocab_size) if forced else self.mask
        return sampler.sample(logits, generated, prompt, allowed=allowed)
