"""One generated reply for the HTTP endpoints: the engine's output chunks, parsed as they come
(reply.py), with timings for the metrics and the finish reason in OpenAI's terms."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional

from ..request import FinishReason, Request, RequestOutput
from ..reply import ReplyEvent, ReplyStream
from ..sampling import Sample, SamplingParams
from ..tokenizer import CALL_ID, N_TEXT_TOKENS
from .errors import APIError

if TYPE_CHECKING:
    from .app import ServerContext

__all__ = ["Chunk", "Generation", "interleaved", "openai_finish_reason"]


@dataclass
class Chunk:
    """What one engine output adds: reply events, and the logprobs of its visible-text tokens."""

    events: list[ReplyEvent]
    logprobs: list[tuple[int, Sample]] = field(default_factory=list)  # (token, sample) of content tokens
    output: Optional[RequestOutput] = None


class Generation:
    """A request submitted to the engine, its reply parsed (`reply`) as it streams."""

    def __init__(self, ctx: ServerContext, prompt: list[int], params: SamplingParams, *, harmony: bool = True,
                 constraint: Any = None):
        ctx.check_room()
        self.ctx = ctx
        self.prompt = prompt
        self.stopped_by: Optional[str] = None  # the stop string that ended the visible text
        self.reply = None
        if harmony:  # stop strings apply to the text for the user, not to the reasoning
            self.reply = ReplyStream(ctx.tokenizer, stop=tuple(params.stop or ()))
            if params.stop:
                params = SamplingParams.merged(params, stop=())
        self.t_submit = time.monotonic()
        self.first_token_at: Optional[float] = None
        self._last_token_at: Optional[float] = None
        self.last: Optional[RequestOutput] = None
        try:
            self.stream = ctx.engine.submit_async(Request(prompt, params, tokenizer=ctx.tokenizer,
                                                          vocab_limit=ctx.vocab_limit, constraint=constraint))
        except ValueError as e:  # bad ids, context overflow, capacity: the client's request
            code = "context_length_exceeded" if "context" in str(e) else "invalid_value"
            raise APIError(400, str(e), code=code) from None

    async def chunks(self) -> AsyncIterator[Chunk]:
        reply, ctx = self.reply, self.ctx
        async for out in self.stream:
            now = time.monotonic()
            if out.tokens:
                ctx.metrics.token_times(self, now, len(out.tokens))
            events: list[ReplyEvent] = []
            lps: list[tuple[int, Sample]] = []
            for j, tok in enumerate(out.tokens):
                if reply is None:
                    continue
                p = reply.parser
                visible = (p.state == "content" and p.current_channel != "analysis" and p.current_recipient in (None, "all")
                           and tok < N_TEXT_TOKENS)
                events += reply.feed(tok)
                if visible and out.logprobs is not None and reply.stopped is None:
                    lps.append((tok, out.logprobs[j]))
                if reply.stopped is not None and self.stopped_by is None:
                    self.stopped_by = reply.stopped
                    self.stream.cancel()
            if out.finished:
                self.last = out
                if reply is not None:
                    events += reply.finish()  # closes what a length limit or stop string cut short
                ctx.metrics.finished(self, out, now)
            yield Chunk(events, lps, out)

    def cancel(self) -> None:
        self.stream.cancel()

    @property
    def finish_reason(self) -> str:
        if self.stopped_by is not None:
            return "stop"
        return openai_finish_reason(self.last, self.ctx.tokenizer, self.reply)

    def raise_if_failed(self) -> None:
        """An APIError when the engine ended it early: failed (500) or cancelled by shutdown (503)."""
        if self.outcome == "error":
            raise APIError(500, f"generation failed: {self.last.error}", type="server_error")
        if self.outcome == "cancelled":
            raise APIError(503, "the request was cancelled: the server is shutting down", type="server_error",
                           code="server_shutdown")

    @property
    def outcome(self) -> str:
        """"ok", or why the engine ended it early: "error" or "cancelled" (shutting down)."""
        r = str(self.last.finish_reason) if self.last is not None else "cancelled"
        if self.stopped_by is not None or r not in ("error", "cancelled"):
            return "ok"
        return r


async def interleaved(gens: list[Generation]) -> AsyncIterator[tuple[int, Optional[Chunk]]]:
    """The chunks of several generations (the ``n`` choices of one request) as they come:
    (index, chunk), and (index, None) once that generation has ended. Stopping early cancels them."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, g: Generation) -> None:
        try:
            async for ch in g.chunks():
                await queue.put((i, ch))
        finally:
            await queue.put((i, None))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
    try:
        left = len(gens)
        while left:
            i, ch = await queue.get()
            left -= ch is None
            yield i, ch
    finally:
        for t in tasks:
            t.cancel()
        for g in gens:
            g.cancel()


def openai_finish_reason(out: Optional[RequestOutput], tokenizer: Any, reply: Optional[ReplyStream]) -> str:
    if out is None or out.finish_reason is None:
        return "stop"
    r = out.finish_reason
    if r is FinishReason.STOP:
        if out.stop_reason == getattr(tokenizer, "call", CALL_ID) and reply is not None and reply.tool_calls:
            return "tool_calls"
        return "stop"
    if r in (FinishReason.LENGTH, FinishReason.CONTEXT_LENGTH):
        return "length"
    return str(r)
