"""``gptoss serve``: load the model, start uvicorn on the ASGI app, stop cleanly on SIGINT/SIGTERM.

The HTTP server starts at once (``/health`` answers 503 while the model loads). On a signal,
every in-flight request ends (streams with an error event), the engine loop stops, and uvicorn
closes the connections: nothing hangs.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

__all__ = ["serve", "load_context"]

log = logging.getLogger("gptoss.server")


def load_context(args: Any) -> Any:
    """The `ServerContext` for the command's arguments (loads the model and its tokenizer)."""
    from .. import Model
    from ..tokenizer import load_tokenizer
    from .app import ServerContext

    kw: dict[str, Any] = {"device": args.device}
    if args.threads is not None:
        kw["threads"] = args.threads
    if args.kv_cache_bytes is not None:
        kw["kv_cache_bytes"] = args.kv_cache_bytes
    if args.context is not None:
        kw["max_context"] = args.context
    if getattr(args, "int8_decode", False):
        kw["int8_decode"] = True
    if getattr(args, "precision", None):
        kw["precision"] = args.precision
    model = Model(args.model, **kw)
    tokenizer = load_tokenizer(checkpoint_dir=model.checkpoint_dir, vocab_file=args.vocab_file)
    if model.config.vocab_size < max(tokenizer.special_tokens.values()) + 1:
        raise ValueError(f"the model's vocabulary has {model.config.vocab_size} ids but harmony's special tokens "
                         f"need {tokenizer.n_vocab}: serve a checkpoint with the full vocabulary (a synthetic one: "
                         f"gptoss synthetic ... --vocab {tokenizer.n_vocab})")
    hc = {"auto": None, "on": True, "off": False}[getattr(args, "harmony_constraint", "auto")]
    ctx = ServerContext(model, tokenizer, args.served_model_name, api_key=args.api_key,
                        reasoning_effort=args.reasoning_effort, max_num_seqs=args.max_num_seqs,
                        harmony_constraint=hc, tools=server_tools(args, tokenizer), mcp=mcp_tools(args))
    log.info("model %s loaded (%s)", args.served_model_name, args.device)
    return ctx


def server_tools(args: Any, tokenizer: Any) -> Any:
    """The built-in tools `--builtin-tools` asks for (None: none)."""
    kinds = {k.strip() for k in (getattr(args, "builtin_tools", "") or "").split(",") if k.strip()}
    bad = kinds - {"python", "browser"}
    if bad:
        raise ValueError(f"--builtin-tools: unknown tool(s) {', '.join(sorted(bad))} (python, browser)")
    if not kinds:
        return None
    from .builtin_tools import ServerTools

    backend = None
    if "browser" in kinds:
        from ..tools import LocalSearchBackend
        from ..tools.backends import web_backend_from_env

        backend = LocalSearchBackend(args.browser_index) if args.browser_index else web_backend_from_env()
    if "python" in kinds:
        from ..tools import PythonTool

        PythonTool.check_available()  # refuse to start rather than silently not run it
    return ServerTools(python="python" in kinds, search_backend=backend, tokenizer=tokenizer)


def mcp_tools(args: Any) -> Any:
    """The tools of the MCP server `--tool-server` names (None: none)."""
    url = getattr(args, "tool_server", None)
    if not url:
        return None
    from .mcp_tools import MCPTools

    return MCPTools(url).load()


def serve(args: Any) -> int:
    import uvicorn

    from .app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.served_model_name:
        args.served_model_name = os.path.basename(os.path.normpath(args.model)) or "gpt-oss"
    if args.api_key is None:
        args.api_key = os.environ.get("GPTOSS_API_KEY") or None
    app = create_app(loader=lambda: load_context(args))

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            ctx = app.state.gptoss["ctx"]
            if ctx is not None and not ctx.shutting_down:
                # End every request first, off the signal handler (a step may be running).
                threading.Thread(target=ctx.shutdown, name="gptoss-shutdown", daemon=True).start()
            super().handle_exit(sig, frame)
            # A clean shutdown: exit 0 rather than have uvicorn raise the signal again at the end.
            getattr(self, "_captured_signals", []).clear()

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=10,
                            lifespan="off", access_log=False)
    Server(config).run()
    return 0
