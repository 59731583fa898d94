"""The engine loop: requests come and go while the model steps (continuous batching).

    engine = LLMEngine(model)                      # or model.engine
    stream = engine.submit(Request(prompt_ids, SamplingParams(max_tokens=64, seed=1)))
    for out in stream:                             # RequestOutput chunks; the last one is finished
        print(out.text, end="")
    # in asyncio code (the server):
    stream = engine.submit_async(request)          # bound to the running event loop
    async for out in stream: ...
    stream.cancel()                                # at any time, from any thread

One background thread runs the scheduler (scheduler.py) and the model (runner.py) step after
step; the model releases the GIL while it computes, so the event loop and other threads keep
running. Requests are validated when they are submitted (ValueError, ContextOverflowError,
CapacityError), before they are queued. Outputs go to each stream's queue; for asyncio streams,
once per step and event loop, so a step costs one wake-up of the loop, not one per request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Optional

from .request import FinishReason, Request, RequestOutput
from .runner import EngineRunner, ModelRunner, StepModel
from .scheduler import RequestState, Scheduler, SchedulerConfig, window_blocks

__all__ = ["LLMEngine", "RequestStream", "EngineStats"]

IDLE_EXIT_SECONDS = 2.0
log = logging.getLogger("gptoss.engine")


@dataclass
class EngineStats:
    """Counters since the engine started (the server's metrics read them)."""

    steps: int = 0
    prompt_tokens: int = 0            # prompt tokens of finished requests
    cached_prompt_tokens: int = 0     # of which found in the prefix cache
    generation_tokens: int = 0
    finished: collections.Counter = field(default_factory=collections.Counter)  # by finish reason
    step_seconds: float = 0.0         # in the model
    loop_seconds: float = 0.0         # in the scheduler and output handling


class RequestStream:
    """The outputs of one request. Iterate it (``for``), or ``async for`` it when it came from
    `LLMEngine.submit_async`; `cancel()` ends it at the next step boundary, its KV blocks
    returned at once."""

    def __init__(self, engine: "LLMEngine", state: RequestState, loop: Optional[asyncio.AbstractEventLoop]):
        self._engine = engine
        self.state = state
        self.loop = loop
        self._q: Any = asyncio.Queue() if loop is not None else queue.SimpleQueue()
        self._done = False

    @property
    def request_id(self) -> str:
        return self.state.id

    def cancel(self) -> None:
        self._engine.cancel(self.request_id)

    def __iter__(self) -> Iterator[RequestOutput]:
        if self.loop is not None:
            raise TypeError("this stream belongs to an event loop: use `async for`")
        try:
            while not self._done:
                out = self._q.get()
                self._done = out.finished
                yield out
        finally:
            if not self._done:  # the caller stopped early (break, Ctrl-C): stop the request
                self.cancel()

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[RequestOutput]:
        if self.loop is None:
            raise TypeError("this stream is synchronous: use `for`, or LLMEngine.submit_async")
        try:
            while not self._done:
                out = await self._q.get()
                self._done = out.finished
                yield out
        finally:
            if not self._done:
                self.cancel()


class LLMEngine:
    """Continuous batching over one model: see the module docstring.

    max_num_seqs: requests running at once (more wait in the queue; default 256).
    max_step_tokens: tokens one step runs, decodes and prompt chunks together (default: the
        model's chunk size, 512 on the CPU, 2048 on CUDA).
    runner: what runs the steps (default: the model itself, `EngineRunner`).
    """

    def __init__(self, model: StepModel, *, max_num_seqs: int = 256, max_step_tokens: Optional[int] = None,
                 runner: Optional[ModelRunner] = None):
        self.model = model
        cfg = model.config
        block = int(model.block_size)
        chunk = int(max_step_tokens or model.max_chunk_tokens)
        win = 0
        if any(cfg.is_sliding(i) for i in range(cfg.num_hidden_layers)):
            win = window_blocks(cfg.sliding_window, int(model.window_retain), chunk, block)
        self.scheduler = Scheduler(model, SchedulerConfig(max_num_seqs=max_num_seqs, max_step_tokens=chunk,
                                                          block_size=block, window_blocks=win))
        self.runner: ModelRunner = runner if runner is not None else EngineRunner(model)
        self.stats = EngineStats()
        self._streams: dict[str, RequestStream] = {}
        self._inbox: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    # ------------------------------------------------------------------ client side
    def submit(self, request: Request) -> RequestStream:
        """Queue `request`; returns its (synchronous) stream of outputs."""
        return self._submit([request], None)[0]

    def submit_many(self, requests: list[Request]) -> list[RequestStream]:
        """Queue several requests at once (they start in the same step); all are checked first."""
        return self._submit(requests, None)

    def submit_async(self, request: Request) -> RequestStream:
        """Queue `request` from asyncio code; returns a stream to ``async for`` over."""
        return self._submit([request], asyncio.get_running_loop())[0]

    def _submit(self, requests: list[Request], loop: Optional[asyncio.AbstractEventLoop]) -> list[RequestStream]:
        states = [self.scheduler.make_state(r) for r in requests]  # raises on bad input; nothing queued
        streams = [RequestStream(self, st, loop) for st in states]
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            ids = [st.id for st in states]
            if len(set(ids)) != len(ids) or any(i in self._streams for i in ids):
                raise ValueError("request ids must be unique")
            for st, stream in zip(states, streams):
                self._streams[st.id] = stream
                self._inbox.append(("add", st))
            self._start()
        self._wake.set()
        return streams

    def cancel(self, request_id: str) -> None:
        """Ends the request (finish reason "cancelled") at the next step boundary."""
        with self._lock:
            self._inbox.append(("cancel", request_id))
        self._wake.set()

    def close(self) -> None:
        """Cancels everything and stops the loop thread."""
        with self._lock:
            self._closed = True
            self._inbox.append(("close", None))
            t = self._thread
        self._wake.set()
        if t is not None and t is not threading.current_thread():
            t.join()

    def num_unfinished(self) -> int:
        with self._lock:
            return len(self._streams)

    def num_waiting(self) -> int:
        """Requests submitted and not yet running (read from any thread: a snapshot)."""
        with self._lock:
            queued = sum(1 for kind, _ in self._inbox if kind == "add")
        return queued + len(self.scheduler.waiting)

    # ------------------------------------------------------------------ the loop
    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="gptoss-engine", daemon=True)
            self._thread.start()

    def _drain_inbox(self) -> bool:
        """Applies submitted requests and cancellations; False once closed."""
        sched = self.scheduler
        with self._lock:
            msgs = list(self._inbox)
            self._inbox.clear()
        alive = True
        for kind, arg in msgs:
            if kind == "add":
                sched.add(arg)
            elif kind == "cancel":
                stream = self._streams.get(arg)
                if stream is not None:
                    sched.finish(stream.state, FinishReason.CANCELLED)
                    self._emit([stream.state])
            else:
                alive = False
        if not alive:
            for st in list(sched.running) + list(sched.waiting):
                sched.finish(st, FinishReason.CANCELLED)
                self._emit([st])
        return alive

    def _loop(self) -> None:
        sched, stats = self.scheduler, self.stats
        while True:
            if self._inbox and not self._drain_inbox():
                return
            if not sched.has_work():
                if not self._wake.wait(IDLE_EXIT_SECONDS):
                    with self._lock:  # idle: end the thread (a submit starts a new one), so that
                        if not self._inbox:  # the engine and its model can be collected
                            self._thread = None
                            return
                self._wake.clear()
                continue
            t0 = time.perf_counter()
            try:
                items = sched.schedule()
            except BaseException as e:  # noqa: BLE001 - a model that fails to make sequences
                log.exception("scheduling failed")
                for st in list(sched.running) + list(sched.waiting):
                    sched.finish(st, FinishReason.ERROR, e)
                    self._emit([st])
                continue
            if not items:  # nothing can run now (cannot happen with a positive budget); wait
                self._wake.wait(0.01)
                self._wake.clear()
                continue
            t1 = time.perf_counter()
            try:
                samples = self.runner.execute(items)
            except MemoryError as e:
                self._out_of_room(items, e)
                continue
            except BaseException as e:  # noqa: BLE001 - the requests fail, the engine goes on
                for it in items:
                    sched.finish(it.state, FinishReason.ERROR, e)
                self._emit([it.state for it in items])
                continue
            t2 = time.perf_counter()
            self._emit(sched.commit(items, samples))
            stats.steps += 1
            stats.step_seconds += t2 - t1
            stats.loop_seconds += (t1 - t0) + (time.perf_counter() - t2)

    def _out_of_room(self, items: list, err: MemoryError) -> None:
        """The step did not fit in the KV cache: preempt the newest request and plan again; a
        request that does not fit even alone ends with finish reason "length"."""
        sched = self.scheduler
        if len(sched.running) > 1:
            sched.preempt_newest()
            return
        for it in items:
            sched.finish(it.state, FinishReason.LENGTH, None)
        self._emit([it.state for it in items])

    def _emit(self, states: list[RequestState]) -> None:
        by_loop: dict[Any, list] = {}
        stats = self.stats
        for st in states:
            stream = self._streams.get(st.id)
            if stream is None:
                continue
            out = st.take_output()
            if out.finished:
                with self._lock:
                    del self._streams[st.id]
                u = out.usage
                stats.prompt_tokens += u.prompt_tokens
                stats.cached_prompt_tokens += u.cached_tokens
                stats.generation_tokens += u.completion_tokens
                stats.finished[str(out.finish_reason)] += 1
            if stream.loop is None:
                stream._q.put(out)
            else:
                by_loop.setdefault(stream.loop, []).append((stream._q, out))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # that event loop is closed: nobody is listening
                pass

    def __enter__(self) -> "LLMEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _deliver(batch: list) -> None:
    for q, out in batch:
        q.put_nowait(out)

