"""The ``o200k_harmony`` tokenizer used by gpt-oss, built offline.

The vocabulary is never downloaded.  It comes from one of:

1. an explicit ``o200k_base.tiktoken`` file (``vocab_file=``), checked against
   its published sha256;
2. the checkpoint folder (``checkpoint_dir=``): its ``tokenizer.json`` (the
   one a Hugging Face checkpoint ships; its byte-level BPE vocabulary is mapped
   back to raw bytes and checked to be exactly o200k_base), else an
   ``o200k_base.tiktoken`` there.  The ``original/`` folder of a hub download
   has no tokenizer of its own: for it, the download's root (the parent, when it
   holds the HF ``config.json``) is the checkpoint folder.  No other folder is
   searched;
3. as a last resort the environment: ``GPTOSS_TIKTOKEN_VOCAB`` (a file) or
   ``TIKTOKEN_ENCODINGS_BASE`` (a folder holding ``o200k_base.tiktoken``, the
   variable ``openai-harmony`` reads too).

On top of the 199998 text ranks the harmony special tokens sit at fixed ids
(spec section 5): 201088 ids in total.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import AbstractSet, Literal

import tiktoken

__all__ = [
    "O200K_BASE_SHA256",
    "O200K_PATTERN",
    "N_TEXT_TOKENS",
    "N_VOCAB",
    "SPECIAL_TOKENS",
    "ENDOFTEXT_ID",
    "RETURN_ID",
    "CONSTRAIN_ID",
    "CHANNEL_ID",
    "START_ID",
    "END_ID",
    "MESSAGE_ID",
    "CALL_ID",
    "Tokenizer",
    "TokenizerError",
    "load_tokenizer",
    "harmony_special_tokens",
    "bytes_to_unicode",
]

O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
VOCAB_FILENAME = "o200k_base.tiktoken"

# The o200k_base pre-tokenizer pattern: seven alternatives joined by "|".
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

N_TEXT_TOKENS = 199998  # o200k_base mergeable ranks are 0..199997
N_VOCAB = 201088  # model vocabulary size; ids 199998..201087 are special

# Named special tokens; every other id in [199998, N_VOCAB) is <|reserved_N|>.
SPECIAL_TOKENS: dict[str, int] = {
    "<|startoftext|>": 199998,
    "<|endoftext|>": 199999,
    "<|return|>": 200002,
    "<|constrain|>": 200003,
    "<|channel|>": 200005,
    "<|start|>": 200006,
    "<|end|>": 200007,
    "<|message|>": 200008,
    "<|call|>": 200012,
    # Inherited from o200k_base's own specials (tiktoken keeps it).
    "<|endofprompt|>": 200018,
}

# The ids other modules need by name (harmony's stop tokens, the grammars' markers): from here only.
ENDOFTEXT_ID = SPECIAL_TOKENS["<|endoftext|>"]
RETURN_ID = SPECIAL_TOKENS["<|return|>"]
CONSTRAIN_ID = SPECIAL_TOKENS["<|constrain|>"]
CHANNEL_ID = SPECIAL_TOKENS["<|channel|>"]
START_ID = SPECIAL_TOKENS["<|start|>"]
END_ID = SPECIAL_TOKENS["<|end|>"]
MESSAGE_ID = SPECIAL_TOKENS["<|message|>"]
CALL_ID = SPECIAL_TOKENS["<|call|>"]


class TokenizerError(ValueError):
    """The vocabulary source exists but is not the o200k_base vocabulary."""


def harmony_special_tokens() -> dict[str, int]:
    """All special tokens of o200k_harmony, one name per id, ids 199998..201087."""
    named = {v: k for k, v in SPECIAL_TOKENS.items()}
    out: dict[str, int] = {}
    for i in range(N_TEXT_TOKENS, N_VOCAB):
        out[named.get(i, f"<|reserved_{i}|>")] = i
    return out


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character map (byte-level BPE)."""
    # Printable latin-1 bytes map to themselves; the rest are shifted past 255
    # so that every byte has a visible, non-whitespace character.
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


# --------------------------------------------------------------------------
# Vocabulary loading
# --------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse_tiktoken_bytes(data: bytes, source: str) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line:
            continue
        try:
            tok, rank = line.split(b" ")
            ranks[base64.b64decode(tok, validate=True)] = int(rank)
        except Exception as e:  # noqa: BLE001 - re-raised with context
            raise TokenizerError(f"{source}:{lineno}: not a tiktoken vocabulary line: {line[:80]!r}") from e
    return ranks


def _ranks_sha256(ranks: dict[bytes, int]) -> str:
    """sha256 of the canonical ``.tiktoken`` serialization of ``ranks``.

    o200k_base.tiktoken is exactly ``base64(token) rank\\n`` in rank order, so
    this lets a vocabulary from any source be checked against the published hash.
    """
    h = hashlib.sha256()
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        h.update(base64.b64encode(tok) + b" " + str(rank).encode() + b"\n")
    return h.hexdigest()


def _load_tiktoken_file(path: Path, verify: bool) -> dict[bytes, int]:
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    data = path.read_bytes()
    if verify:
        digest = hashlib.sha256(data).hexdigest()
        if digest != O200K_BASE_SHA256:
            raise TokenizerError(
                f"{path} is not o200k_base.tiktoken: sha256 {digest}, expected {O200K_BASE_SHA256}. "
                "Provide the genuine o200k_base.tiktoken file (or pass verify=False at your own risk)."
            )
    ranks = _parse_tiktoken_bytes(data, str(path))
    _check_ranks(ranks, str(path))
    return ranks


def _check_ranks(ranks: dict[bytes, int], source: str) -> None:
    if len(ranks) != N_TEXT_TOKENS or set(ranks.values()) != set(range(N_TEXT_TOKENS)):
        raise TokenizerError(
            f"{source}: expected {N_TEXT_TOKENS} text tokens with ranks 0..{N_TEXT_TOKENS - 1}, "
            f"got {len(ranks)} tokens (max rank {max(ranks.values(), default=-1)})"
        )


def _load_tokenizer_json(path: Path, verify: bool) -> dict[bytes, int]:
    """Recover o200k_base ranks from a Hugging Face byte-level BPE ``tokenizer.json``."""
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
        model = doc["model"]
        vocab: dict[str, int] = model["vocab"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TokenizerError(f"{path}: not a Hugging Face tokenizer.json with model.vocab ({e})") from e
    if model.get("type", "BPE") != "BPE":
        raise TokenizerError(f"{path}: expected a BPE model, got {model.get('type')!r}")

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    specials = harmony_special_tokens()
    special_ids = {v: k for k, v in specials.items()}
    ranks: dict[bytes, int] = {}
    for tok_str, tok_id in vocab.items():
        if tok_id >= N_TEXT_TOKENS:
            # Some exports list the special tokens in model.vocab as well.
            continue
        try:
            ranks[bytes(byte_of[c] for c in tok_str)] = tok_id
        except KeyError as e:
            raise TokenizerError(
                f"{path}: token {tok_str!r} (id {tok_id}) is not byte-level BPE text"
            ) from e
    _check_ranks(ranks, str(path))

    if verify:
        by_name = SPECIAL_TOKENS
        for added in doc.get("added_tokens") or []:
            tid, content = added.get("id"), added.get("content")
            if not isinstance(tid, int) or not (N_TEXT_TOKENS <= tid < N_VOCAB):
                raise TokenizerError(f"{path}: added token {content!r} has id {tid}, not a special id")
            # Named harmony specials must sit at their exact ids; unused slots
            # may carry any placeholder name (they decode as <|reserved_N|>).
            want = special_ids[tid]
            if (want in by_name and content != want) or (content in by_name and by_name[content] != tid):
                raise TokenizerError(f"{path}: added token id {tid} is {content!r}, expected {want!r}")
        digest = _ranks_sha256(ranks)
        if digest != O200K_BASE_SHA256:
            raise TokenizerError(
                f"{path}: vocabulary is not o200k_base (canonical sha256 {digest}, "
                f"expected {O200K_BASE_SHA256})"
            )
    return ranks


# --------------------------------------------------------------------------
# Tokenizer object
# --------------------------------------------------------------------------


class Tokenizer:
    """o200k_harmony: a ``tiktoken.Encoding`` plus harmony's named special ids."""

    # Named special ids (spec section 5).
    startoftext: int = SPECIAL_TOKENS["<|startoftext|>"]
    endoftext: int = SPECIAL_TOKENS["<|endoftext|>"]
    return_: int = SPECIAL_TOKENS["<|return|>"]
    constrain: int = SPECIAL_TOKENS["<|constrain|>"]
    channel: int = SPECIAL_TOKENS["<|channel|>"]
    start: int = SPECIAL_TOKENS["<|start|>"]
    end: int = SPECIAL_TOKENS["<|end|>"]
    message: int = SPECIAL_TOKENS["<|message|>"]
    call: int = SPECIAL_TOKENS["<|call|>"]
    endofprompt: int = SPECIAL_TOKENS["<|endofprompt|>"]
    bos: int = startoftext
    pad: int = endoftext
    eot: int = endoftext  # tiktoken's eot_token
    eos: int = return_  # HF generation_config eos
    #: What to stop sampling on during an assistant turn (harmony's
    #: ``stop_tokens_for_assistant_actions``): <|return|> and <|call|>.
    stop_tokens_for_assistant_actions: frozenset[int] = frozenset({return_, call})
    #: harmony's ``stop_tokens``: adds <|end|>.
    stop_tokens: frozenset[int] = frozenset({return_, call, end})

    def __init__(self, mergeable_ranks: dict[bytes, int], source: str = "<memory>") -> None:
        _check_ranks(mergeable_ranks, source)
        self.source = source
        self._specials = harmony_special_tokens()
        self._encoding = tiktoken.Encoding(
            name="o200k_harmony",
            pat_str=O200K_PATTERN,
            mergeable_ranks=mergeable_ranks,
            special_tokens=self._specials,
            explicit_n_vocab=N_VOCAB,
        )

    # -- properties ---------------------------------------------------------

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The underlying ``tiktoken.Encoding`` named ``o200k_harmony``."""
        return self._encoding

    @property
    def n_vocab(self) -> int:
        return self._encoding.n_vocab

    @property
    def special_tokens(self) -> dict[str, int]:
        """Every special token name -> id (a copy)."""
        return dict(self._specials)

    def is_special(self, token: int) -> bool:
        """True for ids 199998..201087 (harmony specials and reserved slots)."""
        return N_TEXT_TOKENS <= token < N_VOCAB

    def special_id(self, name: str) -> int:
        """Id of a special token by its text, e.g. ``"<|start|>"``."""
        try:
            return self._specials[name]
        except KeyError:
            raise KeyError(f"not a special token of o200k_harmony: {name!r}") from None

    # -- encode / decode --------------------------------------------------

    def encode(
        self,
        text: str,
        allowed_special: Literal["all"] | AbstractSet[str] | Collection[str] = frozenset(),
    ) -> list[int]:
        """Encode ``text``.

        By default special-token text such as ``"<|start|>"`` is encoded as
        ordinary text (never as the special id) — safe for untrusted input.
        Pass ``allowed_special="all"`` or a set of names to map those to ids.
        """
        if allowed_special == "all":
            allowed: AbstractSet[str] | Literal["all"] = "all"
        else:
            allowed = frozenset(allowed_special)
            if not allowed:
                return self._encoding.encode_ordinary(text)
            unknown = allowed - self._specials.keys()
            if unknown:
                raise ValueError(f"not special tokens of o200k_harmony: {sorted(unknown)}")
        return self._encoding.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode with every special-token text treated as plain text."""
        return self._encoding.encode_ordinary(text)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Raw bytes of ``ids``; special tokens decode to their text."""
        ids = [int(t) for t in ids]  # accept numpy integers
        bad = [t for t in ids if not (0 <= t < N_VOCAB)]
        if bad:
            raise ValueError(f"token ids out of range [0, {N_VOCAB}): {bad[:5]}")
        return self._encoding.decode_bytes(ids)

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Decode to text; invalid UTF-8 becomes U+FFFD unless ``errors`` says otherwise."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def __len__(self) -> int:
        return self.n_vocab

    def __repr__(self) -> str:
        return f"Tokenizer(o200k_harmony, n_vocab={self.n_vocab}, source={self.source!r})"


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------

_cache: dict[tuple[str, int, int, bool], Tokenizer] = {}
_cache_lock = threading.Lock()


def _cached(path: Path, kind: str, verify: bool) -> Tokenizer:
    st = path.stat()
    key = (f"{kind}:{path.resolve()}", st.st_size, st.st_mtime_ns, verify)
    with _cache_lock:
        tok = _cache.get(key)
    if tok is not None:
        return tok
    if kind == "tiktoken":
        ranks = _load_tiktoken_file(path, verify)
    else:
        ranks = _load_tokenizer_json(path, verify)
    tok = Tokenizer(ranks, source=str(path))
    with _cache_lock:
        _cache[key] = tok
    return tok


def _candidates(checkpoint_dir: Path) -> list[tuple[Path, str]]:
    """Where a checkpoint may keep its vocabulary, most specific first."""
    dirs = [checkpoint_dir]
    # A hub download keeps tokenizer.json at its root and the original layout in original/.
    if checkpoint_dir.name == "original" and (checkpoint_dir.parent / "config.json").is_file():
        dirs.append(checkpoint_dir.parent)
    out: list[tuple[Path, str]] = []
    for d in dirs:
        out.append((d / "tokenizer.json", "json"))
    for d in dirs:
        out.append((d / VOCAB_FILENAME, "tiktoken"))
    return out


def load_tokenizer(
    checkpoint_dir: str | os.PathLike[str] | None = None,
    vocab_file: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
) -> Tokenizer:
    """Build the o200k_harmony tokenizer from local files only (never downloads).

    Order: ``vocab_file`` (an ``o200k_base.tiktoken``; sha256-checked), then
    ``checkpoint_dir``'s ``tokenizer.json``, then an ``o200k_base.tiktoken``
    there (for the ``original/`` folder of a hub download: the download root's),
    then ``$GPTOSS_TIKTOKEN_VOCAB`` and
    ``$TIKTOKEN_ENCODINGS_BASE/o200k_base.tiktoken``.  Results are cached per
    file.  Raises ``FileNotFoundError`` when nothing usable is found and
    ``TokenizerError`` when a file is not the genuine vocabulary.
    """
    if vocab_file is not None:
        p = Path(vocab_file)
        if p.is_dir():
            p = p / VOCAB_FILENAME
        if not p.is_file():
            raise FileNotFoundError(f"vocab_file not found: {p}")
        kind = "json" if p.suffix == ".json" else "tiktoken"
        return _cached(p, kind, verify)

    looked: list[str] = []
    if checkpoint_dir is not None:
        d = Path(checkpoint_dir)
        if d.is_file():
            d = d.parent
        for path, kind in _candidates(d):
            looked.append(str(path))
            if path.is_file():
                return _cached(path, kind, verify)

    env_file = os.environ.get("GPTOSS_TIKTOKEN_VOCAB")
    if env_file:
        looked.append(env_file)
        if Path(env_file).is_file():
            return _cached(Path(env_file), "tiktoken", verify)
    env_dir = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    if env_dir:
        p = Path(env_dir) / VOCAB_FILENAME
        looked.append(str(p))
        if p.is_file():
            return _cached(p, "tiktoken", verify)

    raise FileNotFoundError(
        "no o200k_harmony vocabulary found (gptoss never downloads one). Provide either "
        "vocab_file=<path to o200k_base.tiktoken, sha256 " + O200K_BASE_SHA256[:12] + "…>, "
        "or checkpoint_dir=<a gpt-oss checkpoint with tokenizer.json>, or set "
        "GPTOSS_TIKTOKEN_VOCAB / TIKTOKEN_ENCODINGS_BASE."
        + (f" Looked in: {', '.join(looked)}" if looked else "")
    )

