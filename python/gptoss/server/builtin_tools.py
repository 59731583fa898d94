"""The built-in tools the server runs for the Responses API: ``code_interpreter`` (the sandboxed
python tool) and ``web_search`` / ``web_search_preview`` (the browser).

One set of tools per conversation: a chain of responses linked by ``previous_response_id`` keeps
its python state and its browser pages. A conversation's tools close when its last stored
response leaves the store, when it has been idle for `idle_seconds`, or at once for a response
that is not stored.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("gptoss.server")

__all__ = ["ServerTools", "TOOL_TYPES"]

# Responses tool type -> built-in tool.
TOOL_TYPES = {"code_interpreter": "python", "web_search": "browser", "web_search_preview": "browser"}


class ServerTools:
    """python: run the code_interpreter tool (when the sandbox can be set up on this machine);
    search_backend: the browser's `SearchBackend` (None: no web_search)."""

    def __init__(self, *, python: bool = True, search_backend: Any = None, tokenizer: Any = None,
                 idle_seconds: float = 1200.0):
        self.python = False
        if python:
            try:
                from ..tools import PythonTool

                PythonTool.check_available()
                self.python = True
            except Exception as e:  # noqa: BLE001 - reported, and code_interpreter is then ignored
                log.warning("code_interpreter is off: %s", e)
        self.backend = search_backend
        self.tokenizer = tokenizer
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[Any, float]] = {}  # conversation -> (BuiltinTools, last use)

    def available(self, kind: str) -> bool:
        return (kind == "python" and self.python) or (kind == "browser" and self.backend is not None)

    def tools_for(self, conversation: str, kinds: set[str]) -> Any:
        """The conversation's `BuiltinTools` (made with `kinds` on first use)."""
        from ..tools import BrowserTool, BuiltinTools

        self.sweep()
        with self._lock:
            entry = self._sessions.get(conversation)
            if entry is None:
                parts: list[Any] = []
                if "python" in kinds:
                    parts.append("python")
                if "browser" in kinds:
                    parts.append(BrowserTool(self.backend, tokenizer=self.tokenizer))
                entry = (BuiltinTools(parts, tokenizer=self.tokenizer), time.monotonic())
            self._sessions[conversation] = (entry[0], time.monotonic())
            return entry[0]

    def release(self, conversation: str) -> None:
        with self._lock:
            entry = self._sessions.pop(conversation, None)
        if entry is not None:
            entry[0].close()

    def sweep(self) -> None:
        """Closes the tools of conversations idle for longer than `idle_seconds`."""
        now = time.monotonic()
        with self._lock:
            old = [k for k, (_, t) in self._sessions.items() if now - t > self.idle_seconds]
            entries = [self._sessions.pop(k) for k in old]
        for tools, _ in entries:
            tools.close()

    def close(self) -> None:
        with self._lock:
            entries = list(self._sessions.values())
            self._sessions.clear()
        for tools, _ in entries:
            tools.close()

    def __len__(self) -> int:
        return len(self._sessions)
