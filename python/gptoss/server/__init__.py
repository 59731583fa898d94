"""``gptoss serve``: an OpenAI-compatible HTTP server (Chat Completions, Responses, Completions)
on the continuous-batching engine. See README.md ("Serve")."""

from .app import ServerContext, create_app

__all__ = ["ServerContext", "create_app"]
