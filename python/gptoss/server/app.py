"""The ASGI application of ``gptoss serve`` (Starlette): routes, auth, limits, errors.

Every error is OpenAI's body with the right status (errors.py): 400 for bad values (naming the
field), 401 without the right key, 404 for an unknown model or route, 413 for oversized bodies,
503 (with Retry-After) while the model loads, when the queue is full, or while shutting down.
Only a fault of the server is a 500, and streams end with an error event instead of breaking.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import __version__
from .errors import APIError, error_body, error_response

if TYPE_CHECKING:
    from ..runner import StepModel
    from ..tokenizer import Tokenizer

log = logging.getLogger("gptoss.server")

__all__ = ["ServerContext", "create_app"]

MAX_BODY_BYTES = 32 << 20
DEFAULT_MAX_WAITING = 1024


class ServerContext:
    """What the endpoints share: the model, its tokenizer, the engine loop, the settings."""

    def __init__(self, model: StepModel, tokenizer: Tokenizer, name: str, *, api_key: Optional[str] = None,
                 reasoning_effort: str = "medium", max_num_seqs: int = 256,
                 max_waiting: int = DEFAULT_MAX_WAITING, engine: Any = None,
                 harmony_constraint: Optional[bool] = None, tools: Any = None, mcp: Any = None):
        from ..llm_engine import LLMEngine
        from .metrics import Metrics
        from .store import ResponseStore

        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.api_key = api_key
        self.reasoning_effort = reasoning_effort
        self.max_waiting = max_waiting
        self.engine = engine if engine is not None else LLMEngine(model, max_num_seqs=max_num_seqs)
        self.vocab_limit = min(int(tokenizer.n_vocab), int(model.config.vocab_size))
        self.max_context = int(model.max_context)
        self.fingerprint = f"gptoss-{__version__}"
        self.created = int(time.time())
        self.metrics = Metrics(self)
        self.tools = tools  # a ServerTools (builtin_tools.py): code_interpreter, web_search; None: neither
        self.mcp = mcp      # an MCPTools (mcp_tools.py): an MCP server's tools, offered as functions
        self.store = ResponseStore(on_forget=tools.release if tools is not None else None)
        self.shutting_down = False
        # Well-formed harmony headers by construction: on where sampling is on the host anyway;
        # the CUDA device sampler does not take masks yet (a mask would pull every row's logits).
        self.harmony_constraint = (not model.samples_on_device) if harmony_constraint is None \
            else bool(harmony_constraint)
        from ..structured.grammars import ll_tokenizer

        ll_tokenizer(tokenizer)  # built once (seconds), now rather than in the first request

    def check_model(self, name: Optional[str]) -> None:
        if name != self.name:
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{self.name}'",
                           param="model", code="model_not_found")

    def check_prompt(self, prompt: list) -> None:
        if len(prompt) >= self.max_context:
            raise APIError(400, f"This model's maximum context length is {self.max_context} tokens, and the "
                           f"prompt is {len(prompt)} tokens (no room for a reply). Shorten the messages.",
                           param="messages", code="context_length_exceeded")

    def check_room(self) -> None:
        if self.shutting_down:
            raise APIError(503, "the server is shutting down", type="server_error", code="server_shutdown")
        if self.engine.num_waiting() >= self.max_waiting:
            raise APIError(503, f"the server is busy: {self.max_waiting} requests are waiting; retry shortly",
                           type="server_error", code="server_overloaded", headers={"Retry-After": "1"})

    def shutdown(self) -> None:
        """Ends every request (streams get an error event), stops the engine loop, closes the
        built-in tools (their sandboxes)."""
        self.shutting_down = True
        self.engine.close()
        if self.tools is not None:
            self.tools.close()


class _Loading:
    """The state before the model has loaded (or after loading failed)."""

    def __init__(self) -> None:
        self.error: Optional[BaseException] = None


def _check_key(ctx: ServerContext, request: Request) -> None:
    if ctx.api_key is None:
        return
    auth = request.headers.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not hmac.compare_digest(key.encode(), ctx.api_key.encode()):
        raise APIError(401, "Incorrect API key provided. Pass it as 'Authorization: Bearer KEY'.",
                       code="invalid_api_key")


async def _json(request: Request) -> Any:
    n = request.headers.get("content-length")
    if n is not None and n.isdigit() and int(n) > MAX_BODY_BYTES:
        raise APIError(413, f"the request body is over {MAX_BODY_BYTES >> 20} MiB", code="request_too_large")
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is over {MAX_BODY_BYTES >> 20} MiB", code="request_too_large")
        chunks.append(part)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None


def _disconnect_guard(request: Request) -> Callable[[Awaitable], Awaitable]:
    """Runs a non-streaming generation, cancelling it at once if the client disconnects."""

    async def guard(aw: Awaitable) -> Any:
        task = asyncio.ensure_future(aw)

        async def watch() -> None:
            while True:
                msg = await request.receive()
                if msg["type"] == "http.disconnect":
                    task.cancel()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            return await task
        finally:
            watcher.cancel()

    return guard


# Characters that str.splitlines() (and so httpx's aiter_lines and many SSE readers) takes for a
# line break although JSON leaves them raw; a model's text can hold any of them. Inside JSON they
# can only sit in strings, where the escaped form means the same.
_LINE_BREAKS_JSON_KEEPS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def sse_frame(obj: Any, named: bool) -> bytes:
    """One server-sent event holding ``obj`` as JSON on a single line, whatever text it carries."""
    data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).translate(_LINE_BREAKS_JSON_KEEPS)
    head = f"event: {obj.get('type', 'error')}\n" if named else ""
    return (head + "data: " + data + "\n\n").encode()


def _sse(events: Any, named: bool) -> StreamingResponse:
    """Server-sent events: ``data: {json}`` chunks (Chat Completions: then ``data: [DONE]``), or
    ``event: TYPE`` + ``data`` (Responses). A failure mid-stream becomes an error event."""

    async def body():
        try:
            async for obj in events:
                yield sse_frame(obj, named)
        except APIError as e:
            err = error_body(e.message, e.type, e.param, e.code)
            yield sse_frame({"type": "error", **err["error"]} if named else err, named)
        except Exception:  # noqa: BLE001 - a bug of ours: say so, never a broken stream
            log.exception("stream failed")
            err = error_body("internal server error", "server_error")
            yield sse_frame({"type": "error", **err["error"]} if named else err, named)
        if not named:
            yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def create_app(ctx: Optional[ServerContext] = None, *, loader: Optional[Callable[[], ServerContext]] = None) -> Starlette:
    """The app for a loaded `ctx`, or one that loads with `loader` in the background (``/health``
    answers 503 until then)."""
    from .chat_api import chat_completions
    from .completions_api import completions
    from .responses_api import get_response, responses
    from .metrics import CONTENT_TYPE

    state: dict[str, Any] = {"ctx": ctx, "loading": _Loading()}

    def context() -> ServerContext:
        c = state["ctx"]
        if c is None:
            err = state["loading"].error
            raise APIError(503, f"the model failed to load: {err}" if err else "the model is loading",
                           type="server_error", code="model_loading", headers={"Retry-After": "5"})
        return c

    def endpoint(handler: Callable, *, auth: bool = True, streams: Optional[str] = None) -> Callable:
        async def run(request: Request) -> Response:
            try:
                c = context()
                if auth:
                    _check_key(c, request)
                result = await handler(c, request)
                if isinstance(result, Response):
                    return result
                if hasattr(result, "__aiter__"):
                    return _sse(result, named=streams == "named")
                return JSONResponse(result)
            except APIError as e:
                return error_response(e)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("request failed")
                return error_response(APIError(500, "internal server error", type="server_error"))

        return run

    async def health(c: ServerContext, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def version(c: ServerContext, request: Request) -> dict:
        from .. import build_info

        return {"version": __version__, "build": build_info()}

    async def models(c: ServerContext, request: Request) -> dict:
        return {"object": "list", "data": [_model_card(c)]}

    async def model(c: ServerContext, request: Request) -> dict:
        c.check_model(request.path_params["model"])
        return _model_card(c)

    async def metrics(c: ServerContext, request: Request) -> Response:
        return Response(c.metrics.render(), media_type=CONTENT_TYPE)

    async def chat(c: ServerContext, request: Request) -> Any:
        return await chat_completions(c, await _json(request), _disconnect_guard(request))

    async def complete(c: ServerContext, request: Request) -> Any:
        return await completions(c, await _json(request), _disconnect_guard(request))

    async def respond(c: ServerContext, request: Request) -> Any:
        return await responses(c, await _json(request), _disconnect_guard(request))

    async def fetch_response(c: ServerContext, request: Request) -> Any:
        return get_response(c, request.path_params["response_id"])

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(APIError(404, f"no route {request.method} {request.url.path}", code="not_found"))

    async def bad_method(request: Request, exc: Exception) -> Response:
        return error_response(APIError(405, f"method {request.method} not allowed on {request.url.path}",
                                       code="method_not_allowed"))

    routes = [
        Route("/health", endpoint(health, auth=False), methods=["GET"]),
        Route("/version", endpoint(version, auth=False), methods=["GET"]),
        Route("/metrics", endpoint(metrics, auth=False), methods=["GET"]),
        Route("/v1/models", endpoint(models), methods=["GET"]),
        Route("/v1/models/{model:path}", endpoint(model), methods=["GET"]),
        Route("/v1/chat/completions", endpoint(chat), methods=["POST"]),
        Route("/v1/completions", endpoint(complete), methods=["POST"]),
        Route("/v1/responses", endpoint(respond, streams="named"), methods=["POST"]),
        Route("/v1/responses/{response_id}", endpoint(fetch_response), methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: bad_method})
    app.state.gptoss = state
    if ctx is None and loader is not None:
        def load() -> None:
            try:
                state["ctx"] = loader()
            except BaseException as e:  # noqa: BLE001 - reported by /health and every endpoint
                log.exception("loading the model failed")
                state["loading"].error = e

        threading.Thread(target=load, name="gptoss-load", daemon=True).start()
    return app


def _model_card(c: ServerContext) -> dict:
    return {"id": c.name, "object": "model", "created": c.created, "owned_by": "gptoss",
            "max_model_len": c.max_context}
