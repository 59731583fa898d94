"""Exceptions raised by gptoss. All are subclasses of ValueError, so callers that only check for
bad input can catch that."""

from __future__ import annotations

__all__ = ["CheckpointError", "ContextOverflowError"]


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or inconsistent with its config (the message names
    the tensor and file)."""


class ContextOverflowError(ValueError):
    """A sequence would grow past the model's context limit (`max_context`)."""
