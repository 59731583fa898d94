"""The C++ safetensors reader against the `safetensors` library on hand-written files: it accepts
exactly what the library accepts (two documented exceptions, where it is stricter), and reads
the same tensors from what both accept."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from gptoss import CheckpointError, _core

safetensors = pytest.importorskip("safetensors")

A = '"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}'
B = '"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}'
Z0 = '"z":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}'


def _t(name: str, dtype: str, shape: str, b: int, e: int) -> str:
    return f'"{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{b},{e}]}}'


# (case, header bytes, data bytes, what our reader says where it is stricter than the library)
CASES = [
    ("one tensor", "{" + A + "}", b"xy", None),
    ("two tensors, header out of offset order", "{" + B + "," + A + "}", b"xyzw", None),
    ("leading whitespace", " \n{" + A + "}", b"xy", None),
    ("trailing space padding", "{" + A + "}    ", b"xy", None),
    ("trailing tab and newline", "{" + A + "}\t\n", b"xy", None),
    ("trailing NUL padding", "{" + A + "}\0\0", b"xy", None),
    ("escaped name", '{"\\u0061\\ud83d\\ude00":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', b"xy", None),
    ("UTF-8 name", '{"\u00e9\u4e2d":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', b"xy", None),
    ("empty name", '{"":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', b"xy", None),
    ("invalid UTF-8", b'{"a\xff":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', b"xy", None),
    ("overlong UTF-8", b'{"a\xc0\xaf":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', b"xy", None),
    ("UTF-8 surrogate", b'{"a\xed\xa0\x80":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', b"xy", None),
    ("lone high surrogate escape", '{"\\ud800":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', b"xy", None),
    ("lone low surrogate escape", '{"\\udc00":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', b"xy", None),
    ("control character in a name", '{"a\x01":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', b"xy", None),
    ("empty header", "{}", b"", None),
    ("empty header, data left over", "{}", b"ab", None),
    ("zero header length", "", b"", None),
    ("not an object", "[]", b"", None),
    ("entry not an object", '{"a":[]}', b"", None),
    ("NaN literal", '{"__metadata__":{"k":NaN},' + A + "}", b"xy", None),
    ("trailing comma", "{" + A + ",}", b"xy", None),
    ("deep nesting", '{"__metadata__":' + "[" * 200 + "]" * 200 + "," + A + "}", b"xy", None),
    ("duplicate key, same entry", "{" + A + "," + A + "}", b"xy", "duplicate key"),
    ("duplicate key, other entry", "{" + A + ',"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"xy", None),
    ("metadata strings", '{"__metadata__":{"format":"pt","k":""},' + A + "}", b"xy", None),
    ("metadata null", '{"__metadata__":null,' + A + "}", b"xy", None),
    ("metadata int value", '{"__metadata__":{"k":1},' + A + "}", b"xy", None),
    ("metadata list", '{"__metadata__":[],' + A + "}", b"xy", None),
    ("unknown field in an entry", '{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"x":[1]}}', b"xy", None),
    ("missing shape", '{"a":{"dtype":"U8","data_offsets":[0,2]}}', b"xy", None),
    ("dtype null", '{"a":{"dtype":null,"shape":[2],"data_offsets":[0,2]}}', b"xy", None),
    ("unknown dtype", "{" + _t("a", "Q8", "[2]", 0, 2) + "}", b"xy", None),
    ("lower-case dtype", "{" + _t("a", "u8", "[2]", 0, 2) + "}", b"xy", None),
    ("every 1-byte dtype", "{" + ",".join(_t(f"t{i}", d, "[1]", i, i + 1) for i, d in enumerate(
        ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0"])) + "}", b"abcdef", None),
    ("F4, whole bytes", "{" + _t("a", "F4", "[4]", 0, 2) + "}", b"xy", None),
    ("F4, half a byte left", "{" + _t("a", "F4", "[3]", 0, 2) + "}", b"xy", None),
    ("scalar", "{" + _t("a", "BF16", "[]", 0, 2) + "}   ", b"xy", None),
    ("shape float", "{" + _t("a", "U8", "[2.0]", 0, 2) + "}", b"xy", None),
    ("shape exponent", "{" + _t("a", "U8", "[2e0]", 0, 2) + "}", b"xy", None),
    ("shape negative", "{" + _t("a", "U8", "[-2]", 0, 2) + "}", b"xy", None),
    ("shape -0", "{" + _t("a", "U8", "[-0,2]", 0, 0) + "}", b"", None),
    ("shape string", "{" + _t("a", "U8", '["2"]', 0, 2) + "}", b"xy", None),
    ("shape leading zero", "{" + _t("a", "U8", "[02]", 0, 2) + "}", b"xy", None),
    ("shape 2^64", "{" + _t("a", "U8", "[18446744073709551616]", 0, 2) + "}", b"xy", None),
    ("shape overflowing", "{" + _t("a", "U8", "[4294967296,4294967296]", 0, 2) + "}", b"xy", None),
    ("empty tensor, huge shape", "{" + _t("z", "U8", "[0,99999999999999999]", 2, 2) + "," + A + "}", b"xy", None),
    ("offsets float", "{" + _t("a", "U8", "[2]", 0, "2.0") + "}", b"xy", None),
    ("three offsets", '{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2,2]}}', b"xy", None),
    ("offsets reversed", "{" + _t("a", "U8", "[0]", 2, 0) + "}", b"xy", None),
    ("byte size too small", "{" + _t("a", "U16", "[2]", 0, 2) + "}", b"xy", None),
    ("byte size too large", "{" + _t("a", "U8", "[1]", 0, 2) + "}", b"xy", None),
    ("gap between tensors", "{" + A + "," + _t("b", "U8", "[2]", 3, 5) + "}", b"xyzuv", None),
    ("overlapping tensors", "{" + A + "," + _t("b", "U8", "[2]", 1, 3) + "}", b"xyz", None),
    ("two tensors, same bytes", "{" + A + "," + _t("b", "U8", "[2]", 0, 2) + "}", b"xy", None),
    ("first tensor not at 0", "{" + _t("a", "U8", "[2]", 1, 3) + "}", b"xyz", None),
    ("trailing data", "{" + A + "}", b"xyz", None),
    ("data truncated", "{" + A + "}", b"x", None),
    ("empty tensor first", "{" + Z0 + "," + A + "}", b"xy", None),
    ("empty tensor last", "{" + _t("z", "U8", "[0]", 2, 2) + "," + A + "}", b"xy", None),
    ("empty tensor inside another", "{" + _t("z", "U8", "[0]", 1, 1) + "," + A + "}", b"xy", None),
    ("empty tensor past the end", "{" + _t("z", "U8", "[0]", 3, 3) + "," + A + "}", b"xy", None),
    ("BF16 data at an odd offset", "{" + _t("a", "BF16", "[1]", 0, 2) + "} ", b"xy", "not aligned"),
    ("F32 data 2-aligned only", "{" + _t("a", "U8", "[2]", 0, 2) + "," + _t("b", "F32", "[1]", 2, 6) + "}",
     b"xyabcd", "not aligned"),
]


# Headers are padded with spaces so that the data starts 8-aligned, as writers do; these cases
# start it one byte later.
MISALIGNED = {"BF16 data at an odd offset"}


def _write(tmp_path, header, data: bytes, length=None, misalign: int = 0) -> str:
    if isinstance(header, str):
        header = header.encode("utf-8")
    if length is None:
        header += b" " * ((misalign - 8 - len(header)) % 8)
    p = str(tmp_path / "t.safetensors")
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return p


def library_read(path: str):
    """{name: (dtype, shape, bytes)} as the safetensors library reads the file, or its error."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        return {k: (v["dtype"], list(v["shape"]), bytes(v["data"])) for k, v in safetensors.deserialize(raw)}
    except Exception as e:  # the library's SafetensorError (and friends)
        return e


def our_read(path: str):
    try:
        tensors = _core.read_safetensors_header(path)
    except CheckpointError as e:
        return e
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    return {name: (dt, shape, raw[8 + n + b:8 + n + e]) for name, dt, shape, b, e in tensors}


def compare_with_library_any(path: str, stricter: "tuple[str, ...]" = ()) -> "str | None":
    """What is wrong with our reader on `path`, or None: it must accept the file iff the library
    does (it may refuse what the library takes only with one of the `stricter` messages), and
    then read the same names, dtypes, shapes and bytes."""
    lib, ours = library_read(path), our_read(path)
    if isinstance(lib, Exception):
        return None if isinstance(ours, Exception) else f"the library refuses ({lib}) but our reader accepts"
    if isinstance(ours, Exception):
        if isinstance(ours, CheckpointError) and any(s in str(ours) for s in stricter):
            return None
        return f"our reader refuses ({ours}) what the library reads"
    return None if ours == lib else "our reader reads other tensors than the library"


def compare_with_library(path: str, stricter: "str | None" = None) -> None:
    """As compare_with_library_any; `stricter`: the refusal expected where the library accepts."""
    if stricter is not None:
        assert not isinstance(library_read(path), Exception)
        ours = our_read(path)
        assert isinstance(ours, CheckpointError) and stricter in str(ours), ours
        return
    why = compare_with_library_any(path)
    assert why is None, why


@pytest.mark.parametrize("case,header,data,stricter", CASES, ids=[c[0] for c in CASES])
def test_reader_agrees_with_the_library(tmp_path, case, header, data, stricter):
    compare_with_library(_write(tmp_path, header, data, misalign=int(case in MISALIGNED)), stricter)


@pytest.mark.parametrize("length,error", [
    (0, "malformed JSON"), (1, "malformed JSON"), (2, None), (3, "runs past the end"),
    (100_000_001, "over the safetensors limit"), (2 ** 63, "over the safetensors limit"),
    (2 ** 64 - 1, "over the safetensors limit")])
def test_header_length_field(tmp_path, length, error):
    p = _write(tmp_path, b"{}", b"", length=length)
    compare_with_library(p)
    if error is None:
        assert _core.read_safetensors_header(p) == []
    else:
        with pytest.raises(CheckpointError, match=error):
            _core.read_safetensors_header(p)


def test_short_files(tmp_path):
    for n in range(8):
        p = str(tmp_path / f"s{n}.safetensors")
        open(p, "wb").write(b"\x02" + b"\0" * (n - 1) if n else b"")
        with pytest.raises(CheckpointError, match="truncated"):
            _core.read_safetensors_header(p)


def test_messages_name_the_problem(tmp_path):
    def msg(header, data):
        with pytest.raises(CheckpointError) as e:
            _core.read_safetensors_header(_write(tmp_path, header, data))
        return str(e.value)

    assert "'b'" in msg("{" + A + "," + _t("b", "U8", "[2]", 1, 3) + "}", b"xyz") and "overlap" in msg(
        "{" + A + "," + _t("b", "U8", "[2]", 1, 3) + "}", b"xyz")
    assert "gap of 1 bytes" in msg("{" + A + "," + _t("b", "U8", "[2]", 3, 5) + "}", b"xyzuv")
    assert "cover only the first 2" in msg("{" + A + "}", b"xyz")
    assert "past the end" in msg("{" + A + "}", b"x")
    assert "unknown dtype 'Q8'" in msg("{" + _t("a", "Q8", "[2]", 0, 2) + "}", b"xy")
    assert "duplicate key 'a'" in msg("{" + A + "," + A + "}", b"xy")
    assert "does not match dtype U16" in msg("{" + _t("a", "U16", "[2]", 0, 2) + "}", b"xy")
    # Names from the file are quoted with control characters escaped and long ones clipped.
    long = "n" * 10_000
    m = msg('{"' + long + '\\u0001":{"dtype":"U8","shape":[3],"data_offsets":[0,2]}}', b"xy")
    assert len(m) < 1000 and "..." in m
    m = msg('{"x\\u0001\\n":{"dtype":"U8","shape":[3],"data_offsets":[0,2]}}', b"xy")
    assert "'x\\x01\\x0a'" in m


def test_value_count_is_bounded(tmp_path):
    # A header of millions of tiny values is refused before it is built up in memory (the library,
    # which skips unknown fields unparsed, takes this one; real headers hold about 10^4 values).
    header = '{"__metadata__":{"k":"v"},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"x":[' + \
        ",".join(["0"] * 2_000_000) + "]}}"
    with pytest.raises(CheckpointError, match="more than 1048576 values"):
        _core.read_safetensors_header(_write(tmp_path, header, b"xy"))


def test_not_a_regular_file(tmp_path):
    import os

    fifo = str(tmp_path / "f.safetensors")
    os.mkfifo(fifo)  # opening it for reading must not wait for a writer
    with pytest.raises(CheckpointError, match="not a regular file"):
        _core.read_safetensors_header(fifo)
    os.mkdir(str(tmp_path / "d.safetensors"))
    with pytest.raises(CheckpointError, match="not a regular file"):
        _core.read_safetensors_header(str(tmp_path / "d.safetensors"))
    with pytest.raises(CheckpointError, match="cannot open"):
        _core.read_safetensors_header(str(tmp_path / "missing.safetensors"))


def test_synthetic_checkpoint_reads_as_the_library_reads_it(make_checkpoint):
    import glob
    import os

    for layout in ("hf", "original"):
        for p in glob.glob(os.path.join(make_checkpoint("tiny", 1, layout), "*.safetensors")):
            compare_with_library(p)
            assert np.all([isinstance(t[0], str) for t in _core.read_safetensors_header(p)])
