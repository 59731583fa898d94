"""Byte-level editing of safetensors files for the loader tests: split a file into its header
and data, rebuild a valid file from tensors, and write headers that are deliberately wrong."""

from __future__ import annotations

import json
import struct
from typing import Any, Optional


def split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """(header as a dict, data section) of a well-formed file."""
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(header: Any, data: bytes, align: int = 8) -> bytes:
    """A file from a header (dict, or its JSON text as str/bytes, written as is) and data; the
    header is padded with spaces so that the data starts `align`-aligned (align=1: no padding)."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode("utf-8")
    header += b" " * ((-(8 + len(header))) % align)
    return struct.pack("<Q", len(header)) + header + data


def tensors(raw: bytes) -> list[tuple[str, str, list[int], bytes]]:
    """(name, dtype, shape, bytes) of every tensor, in data order."""
    hdr, data = split(raw)
    items = sorted(((k, v) for k, v in hdr.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"])
    return [(k, v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in items]


def build(items: list[tuple[str, str, list[int], bytes]], metadata: Optional[dict[str, str]] = None) -> bytes:
    """A valid file holding `items` back to back in the given order."""
    hdr: dict[str, Any] = {} if metadata is None else {"__metadata__": metadata}
    off = 0
    for name, dtype, shape, b in items:
        hdr[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
    return join(hdr, b"".join(b for *_, b in items))


def edit_file(path: str, fn) -> None:
    """Rewrites `path` (a valid file) with fn(list of tensors) -> list of tensors."""
    with open(path, "rb") as f:
        raw = f.read()
    hdr, _ = split(raw)
    out = build(fn(tensors(raw)), hdr.get("__metadata__"))
    with open(path, "wb") as f:
        f.write(out)
