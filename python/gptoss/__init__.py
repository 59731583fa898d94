"""gptoss: fast, correct inference for OpenAI's gpt-oss-20b and gpt-oss-120b.

    import gptoss
    m = gptoss.Model("/path/to/gpt-oss-20b")          # or gptoss.Model.synthetic("tiny")
    logits = m.forward([1, 2, 3])                     # float32 [3, vocab]
"""

from __future__ import annotations

from typing import Any

from .config import ModelConfig, preset
from .errors import CheckpointError, ContextOverflowError

__version__ = "0.1.0"

__all__ = ["Model", "Sequence", "ModelConfig", "CheckpointError", "ContextOverflowError",
           "build_info", "load_tokenizer", "preset", "__version__"]


def build_info() -> dict[str, Any]:
    """Version, compiler, SIMD level in use, ``cpu_bf16_dot`` (whether the CPU's larger products
    can run on bf16 dot products: ``Model(precision="bf16")``), and whether/for which
    architectures CUDA was built."""
    from . import _core  # type: ignore[attr-defined]

    return dict(_core.build_info())


def __dir__() -> list[str]:
    # The public names (some imported lazily, below), not the helpers this module imports.
    return sorted(set(__all__) | {k for k in globals() if k.startswith("__")})


def __getattr__(name: str) -> Any:
    # Import lazily so that pure-Python parts (config, synthetic, harmony) work without the
    # compiled extension, e.g. while it is being built.
    if name in ("Model", "Sequence"):
        from . import model

        return getattr(model, name)
    if name == "load_tokenizer":
        from .tokenizer import load_tokenizer

        return load_tokenizer
    raise AttributeError(f"module 'gptoss' has no attribute {name!r}")
