"""Model runners: run one planned step (scheduler.py) and sample each request's next token.

`ModelRunner` is what the engine loop needs; `EngineRunner` runs a `gptoss.Model`: on the CPU
the step returns logits and each request's own `Sampler` draws on the host; on CUDA the tokens
are drawn on the device (`Model.step_sample`), from the same per-request random streams, and only
token ids come back. Tests plug in runners that replay scripted tokens or return at once.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Sequence

from .sampling import Sample
from .scheduler import ScheduledItem

__all__ = ["ModelRunner", "EngineRunner"]

# Device params for a row whose output token is not wanted (a prompt chunk that is not the last):
# greedy, so no random number of the request's stream is spent on it.
_NO_SAMPLE = dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, u=0.0, vocab_limit=0, logprobs=None,
                  penalties=None)


class ModelRunner(Protocol):
    def execute(self, items: Sequence[ScheduledItem]) -> list[Optional[Sample]]:
        """Runs one step: feeds every item's tokens to its sequence (all or nothing: a step that
        does not fit in the KV cache raises MemoryError and changes nothing) and returns, per
        item, its next token when ``item.sample`` (else None)."""
        ...


def _history(st: Any) -> tuple[Sequence[int], Sequence[int]]:
    """(generated, prompt) for the sampler's penalties; empty when it has none (saves copying
    long contexts every step)."""
    p = st.sampler.params
    if p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0:
        return st.tokens[st.n_prompt:], st.tokens[: st.n_prompt]
    return (), ()


class EngineRunner:
    def __init__(self, model: Any):
        self.model = model
        self.on_device = bool(getattr(model, "samples_on_device", False))

    def execute(self, items: Sequence[ScheduledItem]) -> list[Optional[Sample]]:
        pairs = [(it.state.seq, it.tokens) for it in items]
        if self.on_device and all(it.state.sampler.device_params_ok for it in items if it.sample):
            params = [it.state.sampler.device_params(*_history(it.state)) if it.sample else _NO_SAMPLE
                      for it in items]
            out = self.model.step_sample(pairs, params)
            return [s if it.sample else None for it, s in zip(items, out)]
        logits = self.model.step(pairs)
        return [it.state.sampler.sample(row, *_history(it.state)) if it.sample else None
                for it, row in zip(items, logits)]
