"""How a parsed harmony header is read.

harmony's parser (ours and openai-harmony's alike) reads a lone word after the channel as the
recipient, so ``<|channel|>final <|constrain|>json<|message|>`` -- a form gpt-oss writes for a
JSON final answer -- parses as a message to recipient ``<|constrain|>json``. That word is a
content type, never a recipient: a final answer in that form is still the final answer (to be
constrained, and shown as content), not a tool call.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

__all__ = ["real_recipient", "normalized_message"]

_CONSTRAIN = "<|constrain|>"


def real_recipient(recipient: Optional[str]) -> Optional[str]:
    """The recipient a header names, or None (no recipient, "all", or a content type)."""
    if not recipient or recipient == "all" or recipient.startswith(_CONSTRAIN):
        return None
    return recipient


def normalized_message(message: Any) -> Any:
    """`message` with a content type read as its recipient moved back to `content_type`."""
    r = getattr(message, "recipient", None)
    if r and r.startswith(_CONSTRAIN) and dataclasses.is_dataclass(message):
        return dataclasses.replace(message, recipient=None,
                                   content_type=getattr(message, "content_type", None) or r)
    return message
