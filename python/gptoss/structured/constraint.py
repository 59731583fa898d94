"""The interface a decode loop (today's `GenerationStream`, the scheduler, the server) drives.

A `TokenConstraint` is per request and sees every generated token, in order:

    c = prepare_reply(...)[1]                 # or any other TokenConstraint
    mask = np.empty(bitmask_words(c.vocab_size), np.int32)
    while not c.finished:
        c.fill_bitmask(mask)                  # may run on a worker thread during the engine step
        forced = c.forced_tokens()            # tokens that must come next (no choice left)
        if forced:
            toks = forced                     # append them all without sampling
        else:
            toks = [sampler.sample(logits, ..., allowed=mask).token]
        for t in toks:
            c.advance(t)                      # cheap; raises ConstraintViolation if not allowed
        logits = engine_step(toks)

The mask for position n depends only on the tokens before n, so it can be computed while the
engine computes the logits of position n (llguidance drops the GIL while it computes a mask).
`fill_bitmask` and `forced_tokens` may be called any number of times per position; `advance`
must not run concurrently with them. The bitmask is llguidance's layout: ``ceil(vocab / 32)``
int32 words, bit ``i % 32`` of word ``i // 32`` set when id ``i`` is allowed (the layout
`gptoss.sampling.Sampler` and a device sampler take).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["TokenConstraint", "ConstraintViolation", "bitmask_words", "allowed_ids", "onehot_bitmask"]


class ConstraintViolation(ValueError):
    """A token the constraint does not allow was fed to `advance`."""


@runtime_checkable
class TokenConstraint(Protocol):
    vocab_size: int

    @property
    def finished(self) -> bool:
        """True once the reply is complete (after its stop token): nothing more is allowed."""

    def advance(self, token: int) -> None:
        """Accept the next generated (or forced) token."""

    def fill_bitmask(self, out: np.ndarray) -> None:
        """Write the allowed ids of the next position into `out` (int32, ``bitmask_words``)."""

    def forced_tokens(self) -> list[int]:
        """The tokens that must come next, in order (empty when the model has a choice)."""


def bitmask_words(vocab_size: int) -> int:
    return (int(vocab_size) + 31) // 32


def allowed_ids(bitmask: np.ndarray, vocab_size: int) -> np.ndarray:
    """The ids a bitmask allows, ascending."""
    bits = np.unpackbits(np.ascontiguousarray(bitmask).view(np.uint8), bitorder="little")
    return np.flatnonzero(bits[:vocab_size])


def onehot_bitmask(token: int, vocab_size: int) -> np.ndarray:
    m = np.zeros(bitmask_words(vocab_size), np.int32)
    m.view(np.uint32)[token // 32] = np.uint32(1) << np.uint32(token % 32)
    return m
