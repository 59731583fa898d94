"""Test-only stand-in for `gptoss.Model` with the same Python interface.

Logits depend only on the last token (a deterministic pseudo-random row per token, no table
stored), unless a `script` function says which token must come next given everything in the
cache, in which case that token gets a large logit. Counters record how much work was done, so
tests can check KV-cache reuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

try:  # the engine's error class, so tests catch what the real model raises
    from gptoss.errors import ContextOverflowError
except ImportError:  # pragma: no cover - before errors.py lands
    class ContextOverflowError(ValueError):  # type: ignore[no-redef]
        pass


@dataclass
class FakeConfig:
    vocab_size: int
    max_position_embeddings: int
    eos_token_id: Optional[int] = 200002
    num_hidden_layers: int = 0  # no layers, so no sliding-window blocks to plan for
    sliding_window: int = 0

    def is_sliding(self, layer: int) -> bool:
        return False


class FakeSequence:
    def __init__(self, model: "FakeModel"):
        self.model = model
        self._tokens: list[int] = []
        self.freed = False
        model.sequences_created += 1

    @property
    def tokens(self) -> list[int]:
        return list(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def _append(self, tokens: Sequence[int]) -> np.ndarray:
        if self.freed:
            raise RuntimeError("sequence was freed")
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("empty prompt")
        for t in tokens:
            if not 0 <= t < self.model.config.vocab_size:
                raise ValueError(f"token id {t} out of range")
        if len(self._tokens) + len(tokens) > self.model.max_context:
            raise ContextOverflowError(
                f"{len(self._tokens) + len(tokens)} tokens exceed max_context "
                f"{self.model.max_context}")
        self._tokens.extend(tokens)
        return self.model.logits_for(self._tokens)

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        self.model.prefilled_tokens += len(tokens)
        self.model.prefill_calls += 1
        return self._append(tokens)

    def decode(self, token: int) -> np.ndarray:
        self.model.decoded_tokens += 1
        return self._append([token])

    def fork(self) -> "FakeSequence":
        s = FakeSequence(self.model)
        s._tokens = list(self._tokens)
        return s

    def truncate(self, n: int) -> bool:
        if not self.model.can_truncate or n > len(self._tokens) or n < 0:
            return False
        del self._tokens[n:]
        return True

    def free(self) -> None:
        if not self.freed:
            self.model._cache.append(list(self._tokens))
        self.freed = True
        self.model.sequences_freed += 1


class FakeModel:
    def __init__(self, vocab_size: int = 64, max_context: int = 512, seed: int = 0,
                 script: Optional[Callable[[list[int]], Optional[int]]] = None,
                 can_truncate: bool = True):
        self.config = FakeConfig(vocab_size, max_context)
        self.max_context = max_context
        self.seed = seed
        self.script = script
        self.can_truncate = can_truncate
        self.prefilled_tokens = 0
        self.prefill_calls = 0
        self.decoded_tokens = 0
        self.sequences_created = 0
        self.sequences_freed = 0
        self.step_calls = 0
        self.prefix_cache = True
        self._cache: list[list[int]] = []
        self._live: list[FakeSequence] = []
        self._queries = self._hits = 0

    def logits_for(self, tokens: list[int]) -> np.ndarray:
        v = self.config.vocab_size
        if self.script is not None:
            nxt = self.script(tokens)
            if nxt is not None:
                x = np.zeros(v, dtype=np.float32)
                x[nxt] = 30.0
                return x
        rng = np.random.default_rng([self.seed, tokens[-1]])
        return (rng.standard_normal(v) * 2).astype(np.float32)

    def new_sequence(self, prefix: Optional[Sequence[int]] = None) -> FakeSequence:
        """Like `Model.new_sequence`: with `prefix`, the sequence already holds the longest start
        of it that an earlier sequence held (a prefix cache without a size limit), at most all
        but its last token."""
        s = FakeSequence(self)
        if prefix is not None and self.prefix_cache:
            p = [int(t) for t in prefix]
            best = 0
            for toks in self._cache + [q._tokens for q in self._live if not q.freed]:
                n = 0
                while n < min(len(toks), len(p) - 1) and toks[n] == p[n]:
                    n += 1
                best = max(best, n)
            s._tokens = p[:best]
            self._queries += len(p)
            self._hits += best
        self._live.append(s)
        return s

    def prefix_cache_stats(self) -> dict:
        return dict(kept_blocks=0, registered_blocks=0, query_tokens=self._queries, hit_tokens=self._hits)

    # What the engine loop reads of a model (gptoss.runner.StepModel).
    block_size, window_retain, max_chunk_tokens = 16, 256, 512
    device, samples_on_device = "cpu", False

    def kv_cache_stats(self) -> dict:
        return dict(full_blocks_max=1 << 30, full_blocks_used=0, window_blocks_used=0)

    def step_sample(self, batch, params):
        raise RuntimeError("step_sample needs a CUDA device (this model runs on the CPU)")

    def step(self, batch):
        self.step_calls += 1
        return [seq.prefill(toks) if len(seq) == 0 else
                (seq.decode(toks[0]) if len(toks) == 1 else seq.prefill(toks))
                for seq, toks in batch]


def reply_script(start_marker: Sequence[int], reply: Sequence[int]):
    """A script that answers with `reply`, token by token, after the last `start_marker`."""
    marker = list(start_marker)

    def script(tokens: list[int]) -> Optional[int]:
        m = len(marker)
        for i in range(len(tokens) - m, -1, -1):
            if tokens[i:i + m] == marker:
                k = len(tokens) - (i + m)
                return reply[k] if k < len(reply) else None
        return None

    return script
