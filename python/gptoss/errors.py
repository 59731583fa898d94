"""Exceptions raised by gptoss. All are subclasses of ValueError, so callers that only check for
bad input can catch that."""

from __future__ import annotations

__all__ = ["CheckpointError", "ContextOverflowError", "CapacityError"]


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or inconsistent with its config (the message names
    the tensor and file)."""


class ContextOverflowError(ValueError):
    """A sequence would grow past the model's context limit (`max_context`)."""


class CapacityError(ValueError):
    """A request can never fit in this engine's KV cache, even alone (raise kv_cache_bytes)."""
