"""Shared fixtures: tiny random checkpoints written by gptoss.synthetic in the real layouts."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # test helpers (hf_reference, numpy_reference, ...)

from gptoss.config import ModelConfig, preset  # noqa: E402

try:  # CI runs the fuzz tests on a fixed example set (reproducible); local runs explore anew.
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("ci", derandomize=True)
    if os.environ.get("CI"):
        _hyp_settings.load_profile("ci")
except ImportError:  # pragma: no cover
    pass

# Small configurations that still exercise every structural feature: GQA, several layer pairs,
# odd layer counts, windows shorter than the sequences, different expert counts and top-k.
TINY_CONFIGS = {
    "tiny": dict(),
    "tiny4": dict(num_hidden_layers=4),
    "gqa4": dict(num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2, num_experts=8,
                 experts_per_token=4, hidden_size=96, intermediate_size=64, sliding_window=5),
    "hd32": dict(num_hidden_layers=2, head_dim=32, num_attention_heads=6, num_key_value_heads=3,
                 num_experts=5, experts_per_token=3, hidden_size=128, intermediate_size=96,
                 sliding_window=11, vocab_size=777),
}


def tiny_config(name: str) -> ModelConfig:
    return preset("tiny", **TINY_CONFIGS[name])


def interrupt_prefill(seq, toks: list[int], delay: float) -> int:
    """Ctrl-C (an interrupt of the main thread after `delay` s) during seq.prefill(toks), a prefill
    of 2-token chunks long enough to be interrupted: it raises KeyboardInterrupt at a chunk
    boundary and keeps exactly what it processed. Returns how many tokens that was."""
    import _thread
    import threading

    timer = threading.Timer(delay, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        seq.prefill(toks)
    timer.cancel()
    n = len(seq)
    assert 0 < n < len(toks) and n % 2 == 0  # stopped at a chunk boundary
    assert seq.tokens == toks[:n]  # and the cache holds exactly what was processed
    return n


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
    """make_checkpoint(name, seed, layout) -> directory of a written tiny checkpoint (cached)."""
    from gptoss.synthetic import write_checkpoint

    cache: dict = {}

    def make(name: str = "tiny", seed: int = 0, layout: str = "hf") -> str:
        key = (name, seed, layout)
        if key not in cache:
            d = tmp_path_factory.mktemp(f"{name}-{seed}-{layout}")
            write_checkpoint(tiny_config(name), str(d), seed=seed, layout=layout)
            cache[key] = str(d)
        return cache[key]

    return make
