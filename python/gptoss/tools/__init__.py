"""The built-in tools gpt-oss was trained to use: a sandboxed, stateful python tool
(`PythonTool`) and a browser (`BrowserTool`) over a search backend (`LocalSearchBackend`,
`ExaBackend`, `YouComBackend`, or your own `SearchBackend`).

The browser's and the python tool's runtime packages are in the ``tools`` extra
(``pip install 'gptoss[tools]'``); the python tool also needs bubblewrap (``apt-get install
bubblewrap``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PythonTool", "ExecutionResult", "SandboxError", "SandboxLimits", "BrowserTool",
           "Citation", "SearchBackend", "BackendError", "LocalSearchBackend", "ExaBackend",
           "YouComBackend", "PageContents", "SearchResult", "BuiltinTools", "ToolOutput",
           "web_backend_from_env"]

_HOMES = {
    "PythonTool": "python_tool", "ExecutionResult": "python_tool",
    "SandboxError": "sandbox", "SandboxLimits": "sandbox",
    "BrowserTool": "browser", "Citation": "browser",
    "SearchBackend": "backends", "BackendError": "backends", "ExaBackend": "backends",
    "YouComBackend": "backends", "LocalSearchBackend": "local_search",
    "PageContents": "pages", "SearchResult": "pages", "web_backend_from_env": "backends",
    "BuiltinTools": "runner", "ToolOutput": "runner",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that `import gptoss.tools` works without the optional packages installed.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'gptoss.tools' has no attribute {name!r}")
