"""`gptoss.Model`: a gpt-oss checkpoint loaded into the C++ runtime, and its sequences.

The runtime keeps many sequences at once in a paged KV cache. A `Sequence` is a handle to one
of them; `Model.step` advances several in one batched call (a ragged batch: each sequence may
bring one token or a whole prompt).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Iterable, Mapping, Optional, Sequence as Seq, Union

import numpy as np

from .checkpoint import open_checkpoint
from .config import ModelConfig, preset
from .errors import CheckpointError, ContextOverflowError
from .hub import resolve_checkpoint
from .sampling import DeviceDraw, Sample

__all__ = ["Model", "Sequence"]

TokenList = Union[Seq[int], np.ndarray]
_engine_lock = threading.Lock()


def _core():
    try:
        from . import _core as core  # type: ignore[attr-defined]
    except ImportError as e:  # pragma: no cover - only when the extension was not built
        raise ImportError(f"gptoss C++ extension is not built/installed ({e}); run `pip install .`") from None
    return core


def _as_tokens(tokens: TokenList, what: str = "tokens") -> np.ndarray:
    if isinstance(tokens, (int, np.integer)):
        raise TypeError(f"{what} must be a sequence of token ids, not a single int")
    arr = np.asarray(tokens)
    if arr.size == 0:
        raise ValueError(f"{what} is empty: at least one token is needed")
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must hold integer token ids, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _default_kv_bytes() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        total = 16 << 30
    return max(256 << 20, total // 4)


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover
        pass
    return 1 << 62


def _preload(files: list[str], progress: Optional[bool]) -> bool:
    """Read the checkpoint once, sequentially, so its pages are resident before the first token
    (disk order is far faster than the forward pass's access order). Shows a progress bar on
    stderr for large checkpoints. Skipped (False) when the checkpoint does not fit in memory:
    then pages are read on demand."""
    total = sum(os.path.getsize(f) for f in files)
    show = progress if progress is not None else (total > (1 << 30) and sys.stderr.isatty())
    if total > 0.9 * _available_memory():
        if show:
            sys.stderr.write(f"checkpoint ({total / 1e9:.1f} GB) exceeds available memory: pages load on demand\n")
        return False
    buf = bytearray(64 << 20)
    mv = memoryview(buf)
    done, t0, last = 0, time.time(), 0.0
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            try:
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except (AttributeError, OSError):  # pragma: no cover
                pass
            while True:
                n = fh.readinto(mv)
                if not n:
                    break
                done += n
                now = time.time()
                if show and (now - last > 0.2 or done == total):
                    last = now
                    frac = done / total if total else 1.0
                    bar = "#" * int(30 * frac)
                    rate = done / max(now - t0, 1e-6) / 1e9
                    sys.stderr.write(f"\rloading [{bar:<30}] {done / 1e9:6.2f}/{total / 1e9:.2f} GB {rate:5.2f} GB/s")
                    sys.stderr.flush()
    if show:
        sys.stderr.write("\n")
    return True


class Sequence:
    """One sequence in the model's KV cache. Free it (or let it be collected) to return its blocks."""

    def __init__(self, model: "Model", sid: int) -> None:
        self._model = model
        self._id = sid

    @property
    def id(self) -> int:
        return self._id

    @property
    def model(self) -> "Model":
        return self._model

    def _sid(self) -> int:
        if self._id < 0:
            raise ValueError("this sequence was freed")
        return self._id

    def prefill(self, tokens: TokenList, all_logits: bool = False) -> np.ndarray:
        """Append `tokens`; returns the float32 next-token logits after the last one, shape
        [vocab] (or [len(tokens), vocab] for every position with all_logits=True)."""
        out = self._model._engine.step([self._sid()], [_as_tokens(tokens)], [all_logits])
        return out if all_logits else out[0]

    def decode(self, token: int) -> np.ndarray:
        """Append one token; returns the next-token logits, shape [vocab]."""
        if not isinstance(token, (int, np.integer)) or isinstance(token, bool):
            raise TypeError(f"decode takes one int token id, got {type(token).__name__}")
        return self._model._engine.step([self._sid()], [np.array([int(token)], dtype=np.int64)], [False])[0]

    def fork(self) -> "Sequence":
        """A new sequence sharing this one's cache (copy-on-write)."""
        return Sequence(self._model, self._model._engine.fork(self._sid()))

    def truncate(self, n: int) -> bool:
        """Keep only the first n tokens. False (and nothing changed) if the sliding-window layers
        no longer hold what position n needs; then start a fresh sequence instead."""
        return bool(self._model._engine.truncate(self._sid(), int(n)))

    def free(self) -> None:
        if self._id >= 0:
            sid, self._id = self._id, -1
            self._model._engine.free(sid)

    @property
    def tokens(self) -> list[int]:
        return list(self._model._engine.tokens(self._sid()))

    def __len__(self) -> int:
        return int(self._model._engine.length(self._sid()))

    def __del__(self) -> None:
        try:
            if self._id >= 0 and self._model._engine is not None:
                self._model._engine.free(self._id)
                self._id = -1
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Sequence(id={self._id}, len={len(self) if self._id >= 0 else 'freed'})"


class Model:
    """A gpt-oss model in the gptoss runtime.

    Args:
        path: checkpoint directory: the HF layout (config.json, model.safetensors.index.json and
            shards) or the `original/` layout; a hub download with both is read from its root.
            A Hugging Face repo id (``"openai/gpt-oss-20b"``, or ``"REPO@REVISION"``) is looked
            up in the local Hugging Face cache (never downloaded: see ``gptoss download``).
        device: "cpu", "cuda" or "cuda:N" (a CUDA build; see `gptoss.build_info()`), or
            "cuda-emu": the CUDA backend's own kernels run by a CPU emulator, thousands of times
            slower than a GPU; it exists to test the CUDA code on machines without one.
        max_context: longest sequence allowed (default: the config's max_position_embeddings).
        threads: worker threads (default: all cores).
        kv_cache_bytes: cap on KV cache memory (default: a quarter of physical RAM).
        block_size: KV cache block size in tokens.
        window_retain: extra positions the sliding-window layers keep, so a sequence can be
            rewound (`Sequence.truncate`) by up to this much.
        max_chunk_tokens: tokens per forward chunk (long prompts are processed in chunks); default
            512 on the CPU, 2048 on CUDA (bigger expert GEMMs; the workspace stays ~0.6 GB).
        preload: read the checkpoint into the page cache and map it fully before returning, when
            it fits in memory (default: yes); progress: show a progress bar (default: for large
            checkpoints on a TTY).
        int8_decode: opt-in approximation for faster CPU decode: int8 copies (one scale per 32
            weights) of the attention and unembedding matrices are used for steps of up to 8
            tokens; prefill keeps the exact bf16 weights. Logits then differ from the exact ones
            by about 1e-3 relative. Needs AVX-512 (ignored otherwise; see `int8_decode_active`).
        tokenizer: the o200k_harmony `Tokenizer` to use, or the path of an
            ``o200k_base.tiktoken`` / ``tokenizer.json`` file; default: the checkpoint folder's
            own (see `tokenizer`).
        prefix_cache: keep the KV blocks of finished prefixes (whole blocks) while the cache has
            room, so that `new_sequence(prefix=...)` finds them again (default: on).
        precision: arithmetic of the CPU's matrix products. "fp32" (default): exact products
            of fp32 activations; logits match `transformers` in fp32 to ~2e-6 relative.
            "bf16": activations rounded to bf16, multiplied on the CPU's bf16 dot products
            (AVX512_BF16) with fp32 sums: prefill 1.7-1.8x as fast, batched decode 1.1-1.4x; logits then
            differ from fp32 by 3e-3 to 2e-2 relative, 1.4-5x less than `transformers` run in
            bf16 (csrc/cpu/bf16_dot.md). Needs AVX512_BF16 (ValueError otherwise; see
            `gptoss.build_info()["cpu_bf16_dot"]`). The router always runs in fp32. On CUDA,
            "bf16" runs the tensor-core products on plain bf16 operands instead of the hi/lo
            split (fp32-level).
    """

    def __init__(self, path: Union[str, os.PathLike], device: str = "cpu", max_context: Optional[int] = None,
                 threads: Optional[int] = None, kv_cache_bytes: Optional[int] = None, block_size: int = 16,
                 window_retain: int = 256, max_chunk_tokens: Optional[int] = None, preload: bool = True,
                 progress: Optional[bool] = None, int8_decode: bool = False,
                 tokenizer: Union[None, str, os.PathLike, Any] = None, prefix_cache: bool = True,
                 precision: Optional[str] = None, *,
                 _config: Optional[ModelConfig] = None,
                 _arrays: Optional[dict] = None, _synthetic_seed: Optional[int] = None) -> None:
        self._engine: Any = None
        self._llm: Any = None
        self._tokenizer: Any = None
        self._tokenizer_searched = False
        cuda = _check_device(device)
        precision = _check_precision(precision, cuda is not None)
        if tokenizer is not None:
            if isinstance(tokenizer, (str, os.PathLike)):
                from .tokenizer import load_tokenizer

                tokenizer = load_tokenizer(vocab_file=tokenizer)
            self._tokenizer, self._tokenizer_searched = tokenizer, True
        if _config is not None:
            self.config = _config
            self.checkpoint_dir: Optional[str] = None
            self.layout = "hf"
            files: list[str] = []
        else:
            layout, directory, files, self.config = open_checkpoint(resolve_checkpoint(os.fspath(path)))
            self.checkpoint_dir = directory
            self.layout = layout
        populate = bool(files) and preload and _preload(files, progress)
        cfg = self.config
        if max_context is None:
            max_context = cfg.max_position_embeddings
        if not isinstance(max_context, int) or max_context <= 0:
            raise ValueError(f"max_context must be a positive int, got {max_context!r}")
        self.max_context = int(max_context)
        if threads is not None and (not isinstance(threads, int) or threads <= 0):
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        cdict = _engine_config(cfg, self.max_context)
        if max_chunk_tokens is None:
            max_chunk_tokens = 512 if cuda is None else 2048
        self.device = device
        self.block_size, self.window_retain, self.max_chunk_tokens = block_size, window_retain, max_chunk_tokens
        if cuda is not None:
            # KV cache: kv_cache_bytes caps it (default: most of the free device memory);
            # GPTOSS_KV_DTYPE=bfloat16 halves it (default float32, as the CPU engine).
            # Decode steps replay captured CUDA graphs (GPTOSS_CUDA_GRAPHS=0 turns that off).
            backend, cuda_index = cuda
            self._engine = backend.cuda_engine(
                cdict, files, _arrays, self.layout, block_size=block_size,
                kv_cache_bytes=int(kv_cache_bytes) if kv_cache_bytes is not None else 0,
                window_retain=window_retain, max_chunk_tokens=max_chunk_tokens, device=cuda_index,
                kv_dtype=os.environ.get("GPTOSS_KV_DTYPE", "float32"), synthetic_seed=_synthetic_seed,
                cuda_graphs=os.environ.get("GPTOSS_CUDA_GRAPHS", "1") != "0", prefix_cache=bool(prefix_cache))
            if os.environ.get("GPTOSS_PDL", "0") == "1":  # programmatic dependent launch (sm_90+), measured option
                self._engine.set_pdl(True)  # with the weight kernels' L2 prefetch before they wait
            if precision == "bf16":
                self._engine.set_tc_split(False)
        else:
            self._engine = _core().Engine(
                cdict, files, _arrays, self.layout, block_size=block_size,
                kv_cache_bytes=int(kv_cache_bytes) if kv_cache_bytes is not None else _default_kv_bytes(),
                window_retain=window_retain, max_chunk_tokens=max_chunk_tokens, threads=threads or 0,
                populate=populate, int8_decode=bool(int8_decode), prefix_cache=bool(prefix_cache),
                precision=precision)
        self._precision = str(self._engine.precision)

    @property
    def precision_active(self) -> str:
        """The arithmetic of this model's larger products: "fp32" or "bf16" (`Model(precision=)`)."""
        return self._precision

    @property
    def engine(self) -> Any:
        """This model's continuous-batching engine (`gptoss.llm_engine.LLMEngine`): submit
        requests from any thread or event loop; `generate` and `chat` use it too."""
        if self._llm is None:
            from .llm_engine import LLMEngine

            with _engine_lock:
                if self._llm is None:
                    self._llm = LLMEngine(self)
        return self._llm

    @property
    def tokenizer(self) -> Any:
        """The o200k_harmony tokenizer: the one given to the constructor, else the checkpoint
        folder's (``tokenizer.json``, or ``o200k_base.tiktoken`` there), else the file named by
        ``$GPTOSS_TIKTOKEN_VOCAB`` or ``$TIKTOKEN_ENCODINGS_BASE``; None when there is none.
        Loaded on first use (a second or two)."""
        if not self._tokenizer_searched:
            from .tokenizer import load_tokenizer

            self._tokenizer_searched = True
            try:
                self._tokenizer = load_tokenizer(checkpoint_dir=self.checkpoint_dir)
            except FileNotFoundError:
                self._tokenizer = None
        return self._tokenizer

    @property
    def int8_decode_active(self) -> bool:
        """Whether decode steps use the int8 weight copies (Model(..., int8_decode=True) on AVX-512)."""
        return bool(self._engine.int8_decode)

    @classmethod
    def synthetic(cls, preset_or_config: Union[str, ModelConfig, dict] = "tiny", seed: int = 0,
                  device: str = "cpu", **kwargs: Any) -> "Model":
        """A model with random weights in memory (nothing is written to disk): a preset name
        ("tiny", "gpt-oss-20b", "gpt-oss-120b"), a ModelConfig, or a config dict."""
        from .synthetic import synthetic_tensors

        if isinstance(preset_or_config, str):
            cfg = preset(preset_or_config)
        elif isinstance(preset_or_config, ModelConfig):
            cfg = preset_or_config
        elif isinstance(preset_or_config, dict):
            cfg = ModelConfig.from_dict(preset_or_config)
        else:
            raise TypeError("preset_or_config must be a preset name, a ModelConfig or a dict")
        if isinstance(device, str) and device.startswith("cuda"):
            # Random weights generated directly on the device (same magnitudes, different values
            # than the host generator): no host copy of a full-size model.
            return cls("<synthetic>", device=device, _config=cfg, _synthetic_seed=int(seed), **kwargs)
        arrays = dict(synthetic_tensors(cfg, seed=seed, layout="hf"))
        return cls("<synthetic>", device=device, _config=cfg, _arrays=arrays, **kwargs)

    # ------------------------------------------------------------------ sequences
    def new_sequence(self, prefix: Optional[TokenList] = None) -> Sequence:
        """A new, empty sequence; with `prefix`, one that already holds the longest start of it
        the prefix cache has (``len(seq)`` tokens, never all of them: the last token is left to
        compute, since its logits are wanted), so ``seq.prefill(prefix[len(seq):])`` finishes it."""
        if prefix is None:
            return Sequence(self, self._engine.new_sequence())
        sid, _ = self._engine.new_sequence_cached(_as_tokens(prefix, "prefix"))
        return Sequence(self, sid)

    def prefix_cache_stats(self) -> dict[str, int]:
        """``kept_blocks`` (cached blocks no sequence holds, given up when the KV cache needs
        room), ``registered_blocks``, and the prefix tokens asked for (``query_tokens``) and
        found (``hit_tokens``) by `new_sequence(prefix=...)`."""
        return dict(self._engine.prefix_cache_stats())

    def clear_prefix_cache(self) -> None:
        """Forget every cached block that no sequence holds (they return to the free pool)."""
        self._engine.clear_prefix_cache()

    def step(self, batch: Iterable[tuple[Sequence, TokenList]], all_logits: bool = False) -> list[np.ndarray]:
        """Advance several sequences in one batched call: each (sequence, tokens) pair appends its
        tokens; returns, per pair, the next-token logits [vocab] (or [n, vocab] with all_logits)."""
        seqs, toks = self._unpack(batch, "step")
        if not seqs:
            return []
        out = self._engine.step(seqs, toks, [all_logits] * len(seqs))
        res, r = [], 0
        for t in toks:
            n = len(t) if all_logits else 1
            res.append(out[r:r + n] if all_logits else out[r])
            r += n
        return res

    def _unpack(self, batch: Iterable[tuple[Sequence, TokenList]], what: str) -> tuple[list[int], list[np.ndarray]]:
        """Engine ids and token arrays of (sequence, tokens) pairs, checked."""
        seqs, toks = [], []
        for s, t in batch:
            if not isinstance(s, Sequence) or s._model is not self:
                raise ValueError(f"{what}: every entry must be a Sequence of this model")
            seqs.append(s._sid())
            toks.append(_as_tokens(t))
        return seqs, toks

    @property
    def samples_on_device(self) -> bool:
        """Whether `step_sample` runs on the device (the CUDA backends): only token ids come back."""
        return bool(self._engine.samples_on_device)

    def step_sample(self, batch: Iterable[tuple[Sequence, TokenList]],
                    params: list[Union[DeviceDraw, Mapping[str, Any]]]) -> list[Sample]:
        """Like `step`, but each pair's next token is drawn on the device and only the ids (and any
        requested log-probabilities) come back. params: one `DeviceDraw` per pair (see
        `Sampler.device_params`), or a mapping of its fields. CUDA only."""
        if not self.samples_on_device:
            raise RuntimeError("step_sample needs a CUDA device (this model runs on the CPU)")
        seqs, toks = self._unpack(batch, "step_sample")
        if len(params) != len(seqs):
            raise ValueError("step_sample: one DeviceDraw per (sequence, tokens) pair")
        if not seqs:
            return []
        draws = [q if isinstance(q, DeviceDraw) else DeviceDraw(**q) for q in params]
        cols = {k: [getattr(q, k) for q in draws] for k in ("temperature", "top_k", "top_p", "min_p", "u", "vocab_limit")}
        wants = [q.logprobs for q in draws]
        n = max((w for w in wants if w is not None), default=-1)
        pen = self._penalty_csr([q.penalties for q in draws])
        res = self._engine.step_sample(seqs, toks, np.asarray(cols["temperature"], np.float32),
                                       np.asarray(cols["top_k"], np.int32), np.asarray(cols["top_p"], np.float32),
                                       np.asarray(cols["min_p"], np.float32), np.asarray(cols["u"], np.float32),
                                       np.asarray(cols["vocab_limit"], np.int32), logprobs=n, **pen)
        if n < 0:
            return [Sample(int(t)) for t in res]
        ids, chosen, top_ids, top_lp = res
        out = []
        for i, w in enumerate(wants):
            if w is None:
                out.append(Sample(int(ids[i])))
            else:
                top = [(int(top_ids[i, j]), float(top_lp[i, j])) for j in range(w)]
                out.append(Sample(int(ids[i]), float(chosen[i]), top))
        return out

    def _penalty_csr(self, per_item: list) -> dict:
        """The engine's penalty arrays (pen_off, pen_id, pen_val) from per-item (ids, rep, sub, bias)
        or None; ids outside the vocabulary are ignored, as the host sampler does, except that a
        logit bias there is an error."""
        if all(e is None for e in per_item):
            return {}
        vocab = self.config.vocab_size
        off, ids, vals = [0], [], []
        for e in per_item:
            if e is not None:
                i, rep, sub, bias = (np.asarray(a) for a in e)
                bad = i >= vocab
                if np.any(bad & (bias != 0)):
                    raise ValueError(f"logit_bias token id {int(i[bad][0])} is outside the vocabulary (size {vocab})")
                ok = ~bad & (i >= 0)
                ids.append(i[ok].astype(np.int32))
                vals.append(np.stack([rep[ok], sub[ok], bias[ok]], axis=1).astype(np.float32))
            off.append(off[-1] + (len(ids[-1]) if e is not None else 0))
        return dict(pen_off=np.asarray(off, np.int32),
                    pen_id=np.concatenate(ids) if ids else np.zeros(0, np.int32),
                    pen_val=np.concatenate(vals).reshape(-1) if vals else np.zeros(0, np.float32))

    def forward(self, tokens: TokenList) -> np.ndarray:
        """Float32 logits [len(tokens), vocab]: row t is the next-token distribution after tokens[:t+1]."""
        s = self.new_sequence()
        try:
            return s.prefill(tokens, all_logits=True)
        finally:
            s.free()

    def kv_cache_stats(self) -> dict[str, int]:
        f_used, f_alloc, f_max, w_used, w_alloc, w_max = self._engine.kv_stats()
        return dict(full_blocks_used=f_used, full_blocks_allocated=f_alloc, full_blocks_max=f_max,
                    window_blocks_used=w_used, window_blocks_allocated=w_alloc, window_blocks_max=w_max)

    # ------------------------------------------------------------------ generation
    def generate(self, prompt: Union[str, TokenList], **kwargs: Any) -> Any:
        """Raw completion (no chat format) of `prompt`: text (encoded by the model's tokenizer;
        special-token text stays plain text) or token ids. Returns a `GenerationResult` whose
        ``text`` is decoded when the model has a tokenizer; see `gptoss.generate.generate` for
        the sampling keywords and ``stream=True`` (an iterator of chunks)."""
        from .generate import check_vocab, generate

        tok = kwargs.pop("tokenizer", None)
        if tok is None:
            tok = self.tokenizer
        if isinstance(prompt, str):
            if tok is None:
                where = (f"its checkpoint folder {self.checkpoint_dir} has no tokenizer.json"
                         if self.checkpoint_dir else "it was made in memory, without tokenizer files")
                raise ValueError(
                    f"generate() got text but this model has no tokenizer ({where}): pass token "
                    "ids, or Model(..., tokenizer=<o200k_base.tiktoken or tokenizer.json>)")
            if not prompt:
                raise ValueError("the prompt is empty")
            ids = tok.encode(prompt)
        else:
            ids = [int(t) for t in _as_tokens(prompt, "prompt_tokens")]
        if tok is not None:
            check_vocab(self, ids, tok)
            kwargs.setdefault("vocab_limit", min(int(tok.n_vocab), self.config.vocab_size))
        return generate(self, ids, tokenizer=tok, **kwargs)

    # ------------------------------------------------------------------ chat (harmony)
    def chat(self, messages: Any, **kwargs: Any) -> Any:
        """Harmony chat on this model; see `gptoss.chat.chat` (sampling keywords, tools, and the
        structured-output keywords response_format, tool_choice, thinking_token_budget,
        harmony_constraint)."""
        from .chat import chat

        return chat(self, messages, **kwargs)

    def __repr__(self) -> str:
        c = self.config
        return (f"Model({self.checkpoint_dir or 'synthetic'!r}, layers={c.num_hidden_layers}, "
                f"experts={c.num_experts}, vocab={c.vocab_size}, device={self.device!r})")


def _engine_config(cfg: ModelConfig, max_context: int) -> dict:
    """The config dict the C++ engines take."""
    inv_freq, conc = cfg.yarn()
    return dict(
        num_hidden_layers=cfg.num_hidden_layers, num_experts=cfg.num_experts,
        experts_per_token=cfg.experts_per_token, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, head_dim=cfg.head_dim,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        sliding_window=cfg.sliding_window, max_context=max_context, swiglu_limit=cfg.swiglu_limit,
        rms_norm_eps=cfg.rms_norm_eps, attn_scale=cfg.head_dim ** -0.5,
        sliding=[1 if cfg.is_sliding(i) else 0 for i in range(cfg.num_hidden_layers)],
        inv_freq=inv_freq, rope_concentration=conc,
    )


def cuda_memory_plan(config: Union[str, ModelConfig], max_chunk_tokens: int = 2048, block_size: int = 16,
                     window_retain: int = 256, kv_dtype: str = "float32") -> dict[str, float]:
    """Device memory in bytes that `Model(..., device="cuda")` takes for a preset name or config,
    computed without a GPU (the CUDA engine's own allocation code, counting only): ``weights``,
    ``workspace`` (activations, logits, ...), ``kv_bytes_per_token`` (per token of context: the
    full-attention layers' K and V) and ``kv_bytes_per_sequence_window`` (the most a sequence's
    window layers hold besides; both groups of layers draw from one KV budget)."""
    cfg = preset(config) if isinstance(config, str) else config
    core = _core()
    info = core.build_info()
    backend = core if info["cuda"] else core.cuda_emu if info["cuda_emu"] else None
    if backend is None:
        raise RuntimeError("this gptoss build has neither the CUDA backend nor its emulator")
    return dict(backend.cuda_memory_plan(_engine_config(cfg, cfg.max_position_embeddings), block_size=block_size,
                                         window_retain=window_retain, max_chunk_tokens=max_chunk_tokens,
                                         kv_dtype=kv_dtype))


def _check_precision(precision: Optional[str], cuda: bool) -> str:
    """The precision a Model runs with: the one asked for (checked), else fp32."""
    if precision is None:
        return "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if precision == "bf16" and not cuda and not _core().kernels.bf16_dot_available():
        raise ValueError("precision='bf16' needs a CPU with AVX512_BF16 (bf16 dot products); this one has "
                         "none (or GPTOSS_SIMD lowers the SIMD level): use precision='fp32'")
    return precision


def _check_device(device: str) -> Optional[tuple[Any, int]]:
    """None for the CPU; (backend module, device index) for "cuda" / "cuda:N" / "cuda-emu"
    (RuntimeError when this build has no CUDA backend or no device is visible)."""
    if device == "cpu":
        return None
    if device == "cuda-emu":
        core = _core()
        if not core.build_info()["cuda_emu"]:
            raise RuntimeError("device='cuda-emu' requested but this build has no CUDA emulator "
                               "(build_info()['cuda_emu'] is False; it is built unless GPTOSS_CUDA_EMU=OFF)")
        return core.cuda_emu, 0
    if isinstance(device, str) and (device == "cuda" or device.startswith("cuda:")):
        index = 0
        if device != "cuda":
            try:
                index = int(device[5:])
            except ValueError:
                raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
        core = _core()
        info = core.build_info()
        if not info["cuda"]:
            raise RuntimeError("device='cuda' requested but this gptoss build has no CUDA backend "
                               "(build_info()['cuda'] is False); reinstall on a machine with nvcc")
        n = core.cuda_device_count()
        if n == 0:
            raise RuntimeError("device='cuda' requested but no CUDA device is visible "
                               "(no NVIDIA GPU or driver on this machine)")
        if not 0 <= index < n:
            raise RuntimeError(f"device={device!r} requested but only {n} CUDA device(s) are visible")
        return core, index
    raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'cuda-emu'")
