"""The worker threads that compute constrained requests' masks while an engine step runs (the
engine and llguidance both drop the GIL, so on a GPU the mask costs nothing when it takes less
time than the step; see `gptoss.runner.EngineRunner`)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

__all__ = ["mask_executor"]

_pool: Optional[ThreadPoolExecutor] = None
_pool_lock = threading.Lock()


def mask_executor() -> ThreadPoolExecutor:
    """The shared worker threads that compute masks during engine steps."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gptoss-mask")
    return _pool
