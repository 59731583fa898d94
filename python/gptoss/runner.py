"""Model runners: run one planned step (scheduler.py) and sample each request's next token.

`ModelRunner` is what the engine loop needs; `EngineRunner` runs a `gptoss.Model`: on the CPU
the step returns logits and each request's own `Sampler` draws on the host; on CUDA the tokens
are drawn on the device (`Model.step_sample`), from the same per-request random streams, and only
token ids come back. Tests plug in runners that replay scripted tokens or return at once.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Sequence

import numpy as np

from .sampling import GREEDY_DRAW, DeviceDraw, Sample
from .scheduler import KVCache, ScheduledItem

__all__ = ["ModelShape", "StepModel", "ModelRunner", "EngineRunner"]


class ModelShape(Protocol):
    """What the engine reads of a model's config (`gptoss.ModelConfig` has it all)."""

    vocab_size: int
    max_position_embeddings: int
    sliding_window: int
    num_hidden_layers: int

    def is_sliding(self, layer: int) -> bool: ...


class StepModel(KVCache, Protocol):
    """What the engine needs of a model (`gptoss.Model`; tests use doubles): its shape, its KV
    cache's layout, and batched steps that return logits or, when `samples_on_device`, tokens
    drawn on the device."""

    config: ModelShape
    device: str
    samples_on_device: bool
    block_size: int
    window_retain: int
    max_chunk_tokens: int

    def step(self, batch: Sequence[tuple[Any, Sequence[int]]]) -> list[np.ndarray]: ...

    def step_sample(self, batch: Sequence[tuple[Any, Sequence[int]]], params: Sequence[DeviceDraw]) -> list[Sample]: ...

    def prefix_cache_stats(self) -> dict[str, int]: ...



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


def _masks(items: Sequence[ScheduledItem]) -> list[list[int]]:
    """Each constrained item's mask (into its state) and forced tokens for the next position."""
    out = []
    for it in items:
        c = it.state.constraint
        c.fill_bitmask(it.state.mask)
        out.append(c.forced_tokens())
    return out


def _constrained_sample(st: Any, row: Any, forced: list[int]) -> Sample:
    if not forced:
        return st.sampler.sample(row, *_history(st), allowed=st.mask)
    if st.sampler.params.logprobs is None:
        return Sample(forced[0])  # no choice: no draw
    from .structured.constraint import onehot_bitmask

    return st.sampler.sample(row, *_history(st), allowed=onehot_bitmask(forced[0], st.constraint.vocab_size))


class EngineRunner:
    """overlap_masks: compute constrained requests' masks on a worker thread while the step runs
    (a GPU step leaves the host idle; on the CPU the step's threads use every core already, and
    one more thread slows the step more than the mask costs)."""

    def __init__(self, model: StepModel):
        self.model = model
        self.on_device = bool(model.samples_on_device)
        self.overlap_masks = model.device.startswith("cuda") and model.device != "cuda-emu"

    def execute(self, items: Sequence[ScheduledItem]) -> list[Optional[Sample]]:
        pairs = [(it.state.seq, it.tokens) for it in items]
        constrained = [it for it in items if it.sample and it.state.constraint is not None]
        if (self.on_device and not constrained
                and all(it.state.sampler.device_params_ok for it in items if it.sample)):
            params = [it.state.sampler.device_params(*_history(it.state)) if it.sample else GREEDY_DRAW
                      for it in items]
            out = self.model.step_sample(pairs, params)
            return [s if it.sample else None for it, s in zip(items, out)]
        fut = None
        if constrained and self.overlap_masks:
            from .structured.driver import mask_executor

            fut = mask_executor().submit(_masks, constrained)
        try:
            logits = self.model.step(pairs)
        finally:
            forced = fut.result() if fut is not None else None  # the worker is done with them
        if constrained and forced is None:
            forced = _masks(constrained)
        by_state = {id(it.state): f for it, f in zip(constrained, forced or [])}
        out: list[Optional[Sample]] = []
        for it, row in zip(items, logits):
            st = it.state
            if not it.sample:
                out.append(None)
            elif st.constraint is not None:
                out.append(_constrained_sample(st, row, by_state[id(st)]))
            else:
                out.append(st.sampler.sample(row, *_history(st)))
        return out
