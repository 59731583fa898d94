"""Tools of an MCP server (``gptoss serve --tool-server URL``), offered to the model as functions
in Responses API requests and run by the server: existing MCP tool servers work unchanged.

The tools are listed once at start. Each call opens a session to the server (streamable HTTP),
calls the tool and closes it; what the tool returns (its text, or its structured result as JSON)
is what the model reads, and an error is reported to the model as text, never raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Optional

log = logging.getLogger("gptoss.server")

__all__ = ["MCPTools"]


class MCPTools:
    def __init__(self, url: str, label: Optional[str] = None):
        self.url = url
        self.label = label or "mcp"
        self.tools: dict[str, dict] = {}  # name -> function tool (flat: name, description, parameters)

    async def _session(self):  # -> async context manager of an initialised ClientSession
        from contextlib import asynccontextmanager

        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        @asynccontextmanager
        async def cm():
            async with streamable_http_client(self.url) as streams:
                async with ClientSession(streams[0], streams[1]) as s:
                    await s.initialize()
                    yield s

        return cm()

    async def connect(self) -> None:
        async with await self._session() as s:
            listed = await s.list_tools()
        for t in listed.tools:
            schema = getattr(t, "input_schema", None) or getattr(t, "inputSchema", None) or {"type": "object"}
            self.tools[t.name] = {"type": "function", "name": t.name, "description": t.description or "",
                                  "parameters": schema}
        log.info("MCP server %s: %d tools (%s)", self.url, len(self.tools), ", ".join(self.tools))

    def load(self) -> "MCPTools":
        """Lists the tools (from a thread without an event loop: the server's loader)."""
        asyncio.run(self.connect())
        return self

    async def call(self, name: str, arguments: str) -> tuple[str, Optional[str]]:
        """(output the model reads, error message or None)."""
        try:
            args = json.loads(arguments or "{}")
            if not isinstance(args, dict):
                raise ValueError("the arguments are not a JSON object")
        except ValueError as e:
            return f"error: invalid arguments for {name}: {e}", str(e)
        try:
            async with await self._session() as s:
                r = await s.call_tool(name, args)
        except Exception as e:  # noqa: BLE001 - the model is told, the request goes on
            log.warning("MCP tool %s failed: %s", name, e)
            return f"error: the tool {name} failed: {e}", str(e)
        texts = [getattr(c, "text", "") for c in (r.content or []) if getattr(c, "type", "") == "text"]
        structured = getattr(r, "structured_content", None)
        out = "".join(texts) if texts else json.dumps(structured) if structured is not None else ""
        err = out if getattr(r, "is_error", False) else None
        return out, err
