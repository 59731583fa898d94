"""The checks each mutated checkpoint must pass, and the worker process that loads them
(tests/test_checkpoint_fuzz.py runs it; tests/checkpoint_mutations.py makes the cases).

The worker (`python tests/checkpoint_fuzz.py worker ...`) loads each case with `gptoss.Model`:

- refused: a CheckpointError whose message names the checkpoint;
- loaded: every safetensors file is one the `safetensors` library reads too, the tensors are
  exactly those a model of the loaded config has, the logits equal those of an engine built from
  the arrays the library reads (same config), and are finite unless tensor bytes were changed;
  mutations that should not change the meaning (key order, padding, unknown keys, metadata)
  give the logits of the unmutated checkpoint bit for bit; the RoPE table and sizes agree with
  what transformers makes of the same config.json (HF layout);
- every safetensors file of the case, used or not, reads exactly as the library reads it (see
  test_safetensors_reader.py), except where our reader is deliberately stricter.

It prints one line per case ("begin" before loading, then the result) so that the parent can
tell which case crashed or hung the process.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sys
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

from checkpoint_mutations import Case, make_case, materialize, read_base  # noqa: E402

TOKENS = [3, 17, 5, 900, 42, 7, 7, 256]
# Where our reader is stricter than the library (messages of the refusals it may make alone).
STRICTER = ("duplicate key", "not aligned", "more than 1048576 values")


# ---------------------------------------------------------------- checks
def _library_tensors(path: str) -> Any:
    """{name: numpy array as the engine takes it} read by the safetensors library, or its error."""
    import numpy as np
    import safetensors

    as_np = {"BF16": np.uint16, "U8": np.uint8, "F32": np.float32}
    try:
        with open(path, "rb") as f:
            items = safetensors.deserialize(f.read())
    except Exception as e:  # the library's SafetensorError
        return e
    return {k: np.frombuffer(bytes(v["data"]), as_np.get(v["dtype"], np.uint8)).reshape(
        v["shape"] if v["dtype"] in as_np else -1) for k, v in items}


class Checker:
    def __init__(self, bases: dict[str, str]) -> None:
        import gptoss

        self.gptoss = gptoss
        _transformers_view(open(os.path.join(bases["hf"], "config.json"), "rb").read())  # imports it
        self.baseline: dict[str, Any] = {}
        self.base_config: dict[str, Any] = {}
        for name, d in bases.items():
            m = self._load(d, preload=False)
            self.baseline[name] = m.forward(TOKENS)
            self.base_config[name] = m.config

    def _load(self, d: str, preload: bool) -> Any:
        return self.gptoss.Model(d, max_context=32, kv_cache_bytes=1 << 22, threads=1, preload=preload)

    def check(self, case: Case, d: str, preload: bool) -> dict[str, Any]:
        """{"outcome": "loaded"|"refused", "problem": None or what is wrong, ...}."""
        import numpy as np

        from test_safetensors_reader import compare_with_library_any

        problems: list[str] = []
        for p in sorted(os.listdir(d)):
            full = os.path.join(d, p)
            if p.endswith(".safetensors") and os.path.isfile(full):
                why = compare_with_library_any(full, STRICTER)
                if why:
                    problems.append(f"reader vs library on {p}: {why}")
        try:
            m = self._load(d, preload)
        except self.gptoss.CheckpointError as e:
            msg = str(e)
            if d not in msg:
                problems.append(f"refusal does not name the checkpoint: {msg}")
            return dict(outcome="refused", error=msg[:300], problem="; ".join(problems) or None)
        except BaseException as e:  # anything else is unclear
            return dict(outcome="error", error=f"{type(e).__name__}: {e}"[:300],
                        problem=f"not a CheckpointError: {type(e).__name__}: {e}"[:500])
        logits = m.forward(TOKENS)
        problems += self._check_loaded(case, d, m, logits)
        if case.neutral:
            base = self.baseline[case.base]
            if not np.array_equal(logits, base, equal_nan=True):
                problems.append(f"a neutral mutation changed the logits (max |d| {np.nanmax(np.abs(logits - base))})")
            if m.config != self.base_config[case.base]:
                problems.append("a neutral mutation changed the config")
        if not case.data_touched and not np.isfinite(logits).all():
            problems.append("non-finite logits from unchanged weights")
        return dict(outcome="loaded", problem="; ".join(problems) or None)

    def _check_loaded(self, case: Case, d: str, m: Any, logits: Any) -> list[str]:
        import numpy as np

        from gptoss import _core
        from gptoss.checkpoint import find_checkpoint
        from gptoss.model import _engine_config
        from gptoss.synthetic import expected_tensors

        problems = []
        layout, _, files = find_checkpoint(d)
        arrays: dict[str, Any] = {}
        for f in files:
            t = _library_tensors(f)
            if isinstance(t, Exception):
                return [f"loaded {os.path.basename(f)}, which the safetensors library refuses: {t}"]
            arrays.update(t)
        want = expected_tensors(m.config, layout)
        if set(arrays) != set(want):
            problems.append(f"loaded tensors {sorted(set(arrays) ^ set(want))[:3]} that the config does not have")
            return problems
        for k, (dt, shape) in want.items():
            if tuple(arrays[k].shape) != tuple(shape):
                problems.append(f"loaded {k} with shape {arrays[k].shape}, the config says {shape}")
        eng = _core.Engine(_engine_config(m.config, 32), [], arrays, layout, kv_cache_bytes=1 << 22, threads=1)
        ref = eng.step([eng.new_sequence()], [np.array(TOKENS, np.int64)], [True])
        if not np.array_equal(logits, ref, equal_nan=True):
            problems.append("logits differ from an engine fed the safetensors library's arrays")
        if layout == "hf":
            problems += _compare_with_transformers(os.path.join(d, "config.json"), m.config)
        return problems


@functools.lru_cache(maxsize=64)
def _transformers_view(text: bytes) -> Any:
    """(config.json as a dict, transformers' GptOssConfig of it, its YaRN table, concentration),
    or None where transformers refuses it. Cached: most cases keep config.json as it was."""
    import logging
    import warnings

    logging.getLogger("transformers").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import transformers
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        try:
            raw = json.loads(text)
            hf = transformers.GptOssConfig(**raw)
            inv, conc = ROPE_INIT_FUNCTIONS["yarn"](hf, "cpu")
        except Exception:  # transformers refuses what we load: not ours to judge here
            return None
    return raw, hf, inv.numpy(), conc


def _compare_with_transformers(path: str, cfg: Any) -> list[str]:
    import numpy as np

    with open(path, "rb") as f:
        view = _transformers_view(f.read())
    if view is None:
        return []
    raw, hf, inv, conc = view
    problems = []
    for ours, theirs in [("num_hidden_layers", "num_hidden_layers"), ("num_experts", "num_local_experts"),
                         ("experts_per_token", "num_experts_per_tok"), ("vocab_size", "vocab_size"),
                         ("hidden_size", "hidden_size"), ("intermediate_size", "intermediate_size"),
                         ("head_dim", "head_dim"), ("num_attention_heads", "num_attention_heads"),
                         ("num_key_value_heads", "num_key_value_heads"), ("sliding_window", "sliding_window"),
                         ("rms_norm_eps", "rms_norm_eps"), ("swiglu_limit", "swiglu_limit")]:
        # Where the HF key is absent, gptoss falls back to the original layout's key (e.g.
        # experts_per_token) and transformers to its own default: not compared.
        if theirs in raw and getattr(cfg, ours) != getattr(hf, theirs, None):
            problems.append(f"{ours} = {getattr(cfg, ours)!r}, transformers reads {getattr(hf, theirs, None)!r}")
    mine, my_conc = cfg.yarn()
    if not np.allclose(np.array(mine, np.float32), inv, rtol=2e-6, atol=0) or \
            not math.isclose(my_conc, conc, rel_tol=1e-9):
        problems.append("RoPE table differs from transformers'")
    return problems


# ---------------------------------------------------------------- worker
def worker(seed: int, start: int, stop: int, bases: dict[str, str], work: str) -> None:
    base_files = {k: read_base(v) for k, v in bases.items()}
    checker = Checker(bases)
    print(json.dumps({"ready": True}), flush=True)
    for i in range(start, stop):
        d = os.path.join(work, f"case{i}")
        print(json.dumps({"begin": i}), flush=True)
        case = Case(base="?", files={})
        try:
            case = make_case(seed, i, base_files)
            materialize(case, d)
            r = checker.check(case, d, preload=i % 50 == 0)  # preloading costs ~0.1 s a load
        except Exception:
            r = dict(outcome="harness-error", problem=traceback.format_exc()[-800:])
        r.update(index=i, ops=case.ops, neutral=case.neutral)
        print(json.dumps(r), flush=True)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        _, _, seed, start, stop, hf, original, work = sys.argv
        worker(int(seed), int(start), int(stop), {"hf": hf, "original": original}, work)
