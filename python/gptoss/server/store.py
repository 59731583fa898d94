"""Stored responses (``store: true``) for ``GET /v1/responses/{id}`` and ``previous_response_id``,
and the signed ``encrypted_content`` that lets a stateless client (Codex sends ``store: false``)
hand the chain of thought back on its next call."""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

__all__ = ["ResponseStore", "StoredResponse"]


@dataclass
class StoredResponse:
    response: dict          # as the client got it
    input_items: list       # the input items it answered (the chain's, in full)
    messages: list          # the conversation as harmony messages, its reply included (no system)
    conversation: str       # the first response id of its previous_response_id chain


class ResponseStore:
    """The most recent `capacity` stored responses. on_forget(conversation) is called when the
    last stored response of a conversation leaves (its built-in tools can close)."""

    def __init__(self, capacity: int = 1024, on_forget: Optional[Callable[[str], None]] = None):
        self.capacity = capacity
        self.on_forget = on_forget
        self._items: collections.OrderedDict[str, StoredResponse] = collections.OrderedDict()
        self._per_conversation: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        self._key = os.urandom(32)

    def put(self, entry: StoredResponse) -> None:
        forgotten = []
        with self._lock:
            rid = entry.response["id"]
            if rid not in self._items:
                self._per_conversation[entry.conversation] += 1
            self._items[rid] = entry
            self._items.move_to_end(rid)
            while len(self._items) > self.capacity:
                _, old = self._items.popitem(last=False)
                self._per_conversation[old.conversation] -= 1
                if self._per_conversation[old.conversation] <= 0:
                    del self._per_conversation[old.conversation]
                    forgotten.append(old.conversation)
        for c in forgotten:
            if self.on_forget is not None:
                self.on_forget(c)

    def get(self, response_id: str) -> Optional[StoredResponse]:
        with self._lock:
            v = self._items.get(response_id)
            if v is not None:
                self._items.move_to_end(response_id)
            return v

    def has_conversation(self, conversation: str) -> bool:
        with self._lock:
            return conversation in self._per_conversation

    # -- reasoning handed back by the client ---------------------------------------------------
    def seal(self, text: str) -> str:
        """Reasoning text as an opaque token: signed by this server (not secret: the client sees
        the reasoning anyway), so what comes back is known to be what the model wrote."""
        data = base64.urlsafe_b64encode(json.dumps({"v": 1, "text": text}).encode()).decode()
        sig = hmac.new(self._key, data.encode(), hashlib.sha256).hexdigest()[:32]
        return f"gptoss:{data}.{sig}"

    def unseal(self, token: Any) -> Optional[str]:
        """The reasoning text of a token from `seal`, or None (not ours, altered, or from before a
        restart: the reasoning is then dropped, as harmony drops it after a final answer)."""
        if not isinstance(token, str) or not token.startswith("gptoss:") or "." not in token:
            return None
        data, _, sig = token[len("gptoss:"):].rpartition(".")
        want = hmac.new(self._key, data.encode(), hashlib.sha256).hexdigest()[:32]
        if not hmac.compare_digest(sig, want):
            return None
        try:
            return str(json.loads(base64.urlsafe_b64decode(data.encode()))["text"])
        except (ValueError, KeyError, TypeError):
            return None
