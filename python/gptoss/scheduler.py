"""Continuous batching: which tokens of which requests the next engine step runs.

Every step runs one token of every running request that is decoding, plus chunks of prompts
(waiting requests, or running ones still prefilling) under one per-step token budget, so a long
prompt never stalls the streams already running for more than one chunk's time. A request is
admitted when the KV cache has room for its first chunk; it starts from the longest prefix the
prefix cache holds. When a step does not fit after all, the newest running request is preempted
(its blocks freed, it goes back to the front of the queue, its tokens are recomputed later,
the prefix cache first) and the step is planned again.

The scheduler owns the requests' state and nothing else: a `ModelRunner` (runner.py) runs the
planned step and samples, and `commit` turns the sampled tokens into outputs, applying the stop
rules (a `RequestState` has the only copy of them).
"""

from __future__ import annotations

import enum
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence

from .errors import CapacityError, ContextOverflowError
from .detokenizer import TextDecoder
import numpy as np

from .request import FinishReason, Request, RequestOutput, Usage
from .sampling import Sample, Sampler

__all__ = ["Scheduler", "SchedulerConfig", "RequestState", "ScheduledItem", "KVCache", "Status"]


class Status(enum.Enum):
    WAITING = 1
    RUNNING = 2
    FINISHED = 3


class KVCache(Protocol):
    """What the scheduler needs of the model: sequences (optionally started from the prefix
    cache) and the pool's state, to admit only what fits."""

    max_context: int

    def new_sequence(self, prefix: Optional[Sequence[int]] = None) -> Any: ...

    def kv_cache_stats(self) -> dict[str, int]: ...


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 256        # running requests at most
    max_step_tokens: int = 512     # tokens per step: decodes plus prompt chunks
    block_size: int = 16           # the KV cache's, to estimate what a chunk needs
    window_blocks: int = 0         # blocks a sequence's window layers hold at most (0: no such layers)


@dataclass(eq=False, slots=True)
class RequestState:
    """A request inside the engine: its tokens so far (prompt, then generated), how many are in
    the KV cache, its sampler and detokenizer, and the output not yet handed out."""

    request: Request
    sampler: Sampler
    decoder: Optional[TextDecoder]
    tokens: list[int]
    n_prompt: int
    arrival: float = field(default_factory=time.monotonic)
    status: Status = Status.WAITING
    seq: Any = None
    computed: int = 0              # tokens[:computed] are in the KV cache
    cached: int = -1               # prompt tokens found in the prefix cache (first admission)
    preemptions: int = 0
    finish: Optional[FinishReason] = None
    stop_reason: Any = None
    error: Optional[BaseException] = None
    admitted_time: Optional[float] = None   # first admission (queue time = this - arrival)
    first_token_time: Optional[float] = None
    pending_tokens: list[int] = field(default_factory=list)
    pending_text: str = ""
    pending_logprobs: Optional[list[Sample]] = None
    stops: frozenset = frozenset()
    max_tokens: Optional[int] = None
    constraint: Any = None         # a gptoss.structured.TokenConstraint, or None
    mask: Any = None               # its bitmask of the next position (int32 words)

    @property
    def id(self) -> str:
        return self.request.request_id

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.n_prompt:]

    @property
    def prompt(self) -> list[int]:
        return self.tokens[: self.n_prompt]

    def usage(self) -> Usage:
        return Usage(self.n_prompt, len(self.tokens) - self.n_prompt, max(self.cached, 0))

    def take_output(self) -> RequestOutput:
        out = RequestOutput(self.id, self.pending_tokens, self.pending_text, self.pending_logprobs)
        self.pending_tokens, self.pending_text = [], ""
        if self.pending_logprobs is not None:
            self.pending_logprobs = []
        if self.status is Status.FINISHED:
            out.finished, out.finish_reason, out.stop_reason = True, self.finish, self.stop_reason
            out.usage, out.error = self.usage(), self.error
        return out


@dataclass(slots=True)
class ScheduledItem:
    """One request's share of a step: feed `tokens`; `sample` when they complete its known
    tokens, so that the step's output is its next token."""

    state: RequestState
    tokens: list[int]
    sample: bool


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


class Scheduler:
    def __init__(self, kv: KVCache, config: SchedulerConfig):
        if config.max_num_seqs < 1 or config.max_step_tokens < 1:
            raise ValueError("max_num_seqs and max_step_tokens must be positive")
        self.kv = kv
        self.cfg = config
        self.waiting: deque[RequestState] = deque()
        self.running: list[RequestState] = []
        self.num_preemptions = 0
        self._hold_admissions = False  # after a preemption, until a step fits again
        stats = kv.kv_cache_stats()
        self._pool_blocks = int(stats["full_blocks_max"])

    # ------------------------------------------------------------------ requests
    def make_state(self, req: Request) -> RequestState:
        """Validates `req` (ValueError, ContextOverflowError, CapacityError) before it is queued."""
        prompt = [int(t) for t in req.prompt]
        if not prompt:
            raise ValueError("empty prompt: at least one token is needed")
        vocab = getattr(getattr(self.kv, "config", None), "vocab_size", None)
        if vocab is not None:
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"token id {bad[0]} is out of range [0, {vocab})")
        p = req.sampling
        if p.stop and req.tokenizer is None:
            raise ValueError("stop strings need a tokenizer to decode the generated text")
        max_ctx = self.kv.max_context
        if len(prompt) > max_ctx:
            raise ContextOverflowError(f"the prompt is {len(prompt)} tokens, more than the context of "
                                       f"{max_ctx} tokens")
        need = self._blocks_alone(len(prompt) + 1)
        if need > self._pool_blocks:
            raise CapacityError(f"a prompt of {len(prompt)} tokens needs about {need} KV cache blocks and the "
                                f"cache holds {self._pool_blocks}: raise kv_cache_bytes or shorten the prompt")
        st = RequestState(req, Sampler(p, vocab_limit=req.vocab_limit),
                          TextDecoder(req.tokenizer, tuple(p.stop or ())) if req.tokenizer is not None else None,
                          prompt, len(prompt), pending_logprobs=[] if p.logprobs is not None else None,
                          stops=frozenset(p.stop_token_ids), max_tokens=p.max_tokens)
        if req.constraint is not None:
            from .structured.constraint import bitmask_words

            st.constraint = req.constraint
            st.mask = np.empty(bitmask_words(req.constraint.vocab_size), np.int32)
        return st

    def add(self, st: RequestState) -> None:
        self.waiting.append(st)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def finish(self, st: RequestState, reason: FinishReason, error: Optional[BaseException] = None) -> None:
        """Ends a request now (cancelled, failed); its blocks go back at once."""
        if st.status is Status.FINISHED:
            return
        if st.status is Status.RUNNING:
            self.running.remove(st)
        else:
            try:
                self.waiting.remove(st)
            except ValueError:
                pass
        self._release(st)
        st.status, st.finish, st.error = Status.FINISHED, reason, error
        if st.decoder is not None:
            st.pending_text += st.decoder.flush()

    def _release(self, st: RequestState) -> None:
        if st.seq is not None:
            seq, st.seq = st.seq, None
            seq.free()
        st.computed = 0

    # ------------------------------------------------------------------ planning
    def _blocks_alone(self, n: int) -> int:
        """KV blocks (both groups of layers) a sequence of n tokens holds at most, plus the
        copy-on-write slack of a step (as SequenceTable::validate counts)."""
        full = _ceil(n, self.cfg.block_size) + 1
        win = min(full, self.cfg.window_blocks + 2) if self.cfg.window_blocks else 0
        return full + win

    def _free_blocks(self) -> int:
        s = self.kv.kv_cache_stats()
        return int(s["full_blocks_max"]) - int(s["full_blocks_used"]) - int(s["window_blocks_used"])

    def _chunk_blocks(self, st: RequestState, n: int) -> int:
        """New blocks that computing n more tokens of st takes (both groups, with the slack)."""
        b = self.cfg.block_size
        full = _ceil(st.computed + n, b) - st.computed // b + 1
        win = min(full, self.cfg.window_blocks + 2) if self.cfg.window_blocks else 0
        return full + win

    def schedule(self) -> list[ScheduledItem]:
        """The next step: every running request's next tokens within the budget (oldest first),
        then waiting requests admitted while the budget and the KV cache allow (not right after a
        preemption: the step that did not fit has to run first)."""
        budget = self.cfg.max_step_tokens
        items: list[ScheduledItem] = []
        for st in self.running:
            if budget <= 0:
                break
            left = len(st.tokens) - st.computed
            if left == 1:  # decoding
                items.append(ScheduledItem(st, [st.tokens[-1]], True))
                budget -= 1
                continue
            n = left if left <= budget else budget
            items.append(ScheduledItem(st, st.tokens[st.computed:st.computed + n], n == left))
            budget -= n
        if self._hold_admissions or not self.waiting:
            return items
        free = self._free_blocks() - sum(self._chunk_blocks(it.state, len(it.tokens)) for it in items)
        while self.waiting and budget > 0 and len(self.running) < self.cfg.max_num_seqs:
            st = self.waiting[0]
            first = min(len(st.tokens) - st.computed, budget)
            if self._chunk_blocks(st, first) > free and self.running:
                break  # wait for room (a request alone always gets its turn)
            self.waiting.popleft()
            self._admit(st)
            left = len(st.tokens) - st.computed
            n = min(left, budget)
            free -= self._chunk_blocks(st, n)
            items.append(ScheduledItem(st, st.tokens[st.computed:st.computed + n], n == left))
            budget -= n
        return items

    def _admit(self, st: RequestState) -> None:
        seq = self.kv.new_sequence(prefix=st.tokens)
        st.seq, st.computed = seq, len(seq)
        if st.cached < 0:
            st.cached = min(st.computed, st.n_prompt)
            st.admitted_time = time.monotonic()
        st.status = Status.RUNNING
        self.running.append(st)

    def preempt_newest(self) -> Optional[RequestState]:
        """Frees the newest running request's blocks and puts it back at the front of the queue
        (its tokens are recomputed when it runs again); None when nothing runs."""
        if not self.running:
            return None
        st = max(self.running, key=lambda s: s.arrival)
        self.running.remove(st)
        self._release(st)
        st.status = Status.WAITING
        st.preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(st)
        self._hold_admissions = True
        return st

    # ------------------------------------------------------------------ results
    def commit(self, items: Sequence[ScheduledItem], samples: Sequence[Optional[Sample]]) -> list[RequestState]:
        """Records a step that ran: the tokens fed are in the cache, and each sampled token is
        appended and checked against the stop rules. Returns the requests with new output."""
        now = None
        changed = []
        max_ctx = self.kv.max_context
        running = Status.RUNNING
        self._hold_admissions = False
        for it, s in zip(items, samples):
            st = it.state
            if st.status is not running:
                continue  # cancelled while the step ran
            st.computed += len(it.tokens)
            if not it.sample:
                continue
            tok = s.token
            st.tokens.append(tok)
            st.pending_tokens.append(tok)
            if st.pending_logprobs is not None:
                st.pending_logprobs.append(s)
            if st.first_token_time is None:
                now = now or time.monotonic()
                st.first_token_time = now
            changed.append(st)
            if st.constraint is not None:
                self._constrained(st, tok, max_ctx)
                continue
            mt = st.max_tokens
            if (tok in st.stops or st.decoder is not None or len(st.tokens) > max_ctx
                    or (mt is not None and len(st.tokens) - st.n_prompt >= mt)):
                reason = self._stop_reason(st, tok, max_ctx)
                if reason is not None:
                    self._finished(st, reason)
        return changed

    def _constrained(self, st: RequestState, tok: int, max_ctx: int) -> None:
        """A constrained request's token: the constraint accepts it, and the tokens it then
        forces are appended at once (one step feeds them together) unless logprobs are wanted."""
        c = st.constraint
        while True:
            c.advance(tok)
            reason = self._stop_reason(st, tok, max_ctx)
            if reason is not None:
                self._finished(st, reason)
                return
            forced = c.forced_tokens() if st.pending_logprobs is None else []
            if not forced:
                return
            tok = forced[0]
            st.tokens.append(tok)
            st.pending_tokens.append(tok)

    def _stop_reason(self, st: RequestState, tok: int, max_ctx: int) -> Optional[FinishReason]:
        """The stop rules, checked after every sampled token, in this order: a stop token (never
        decoded into text), a stop string (the text ends right before it), max_tokens, a full
        context (the next token would not fit)."""
        if tok in st.stops:
            st.stop_reason = tok
            if st.decoder is not None:
                st.pending_text += st.decoder.flush()
            return FinishReason.STOP
        dec = st.decoder
        if dec is not None:
            st.pending_text += dec.push(tok)
            if dec.stopped is not None:
                st.stop_reason = dec.stopped
                return FinishReason.STOP
        mt = st.max_tokens
        if mt is not None and len(st.tokens) - st.n_prompt >= mt:
            reason = FinishReason.LENGTH
        elif len(st.tokens) > max_ctx:
            reason = FinishReason.CONTEXT_LENGTH
        else:
            return None
        if dec is not None:
            st.pending_text += dec.flush()
        return reason

    def _finished(self, st: RequestState, reason: FinishReason) -> None:
        self.running.remove(st)
        self._release(st)
        st.status, st.finish = Status.FINISHED, reason

    def stats(self) -> dict[str, float]:
        s = self.kv.kv_cache_stats()
        used = int(s["full_blocks_used"]) + int(s["window_blocks_used"])
        return dict(num_requests_running=len(self.running), num_requests_waiting=len(self.waiting),
                    num_preemptions=self.num_preemptions,
                    kv_cache_usage_perc=used / max(1, int(s["full_blocks_max"])))


def window_blocks(window: int, window_retain: int, max_chunk_tokens: int, block_size: int) -> int:
    """Blocks a sequence's window layers hold at most (as SequenceTable::validate bounds them)."""
    return math.ceil((window + window_retain + max_chunk_tokens) / block_size)
