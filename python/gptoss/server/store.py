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
from typing import Any, Optional

__all__ = ["ResponseStore"]


class ResponseStore:
    """The most recent `capacity` stored responses, each with the input items it answered."""

    def __init__(self, capacity: int = 1024):
        self.capacity = capacity
        self._items: collections.OrderedDict[str, tuple[dict, list]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._key = os.urandom(32)

    def put(self, response: dict, input_items: list) -> None:
        with self._lock:
            self._items[response["id"]] = (response, input_items)
            self._items.move_to_end(response["id"])
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, response_id: str) -> Optional[tuple[dict, list]]:
        with self._lock:
            v = self._items.get(response_id)
            if v is not None:
                self._items.move_to_end(response_id)
            return v

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
