"""A real `gptoss serve` app on a real port (uvicorn in a thread of the test process), for tests
that drive it with the real openai SDK. The model may be a real tiny checkpoint or the scripted
`FakeModel` (replaying given harmony replies, to reach every tool-call and malformed-output path)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any, Iterator

import uvicorn

from gptoss.server import ServerContext, create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(ctx: ServerContext) -> Iterator[str]:
    """Serves `ctx` on 127.0.0.1; yields the base URL (``http://127.0.0.1:PORT``)."""
    port = free_port()
    app = create_app(ctx)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not t.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(timeout=30)
        ctx.engine.close()


def openai_client(base: str, **kw: Any):
    from openai import OpenAI

    kw.setdefault("api_key", "unused")
    return OpenAI(base_url=base + "/v1", max_retries=0, timeout=120, **kw)
