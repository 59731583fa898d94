"""Tool and response-format schemas as the TypeScript-like text harmony puts in the developer
message, byte for byte as ``openai-harmony`` writes it (its JSON follows serde_json)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .messages import HarmonyError

# --------------------------------------------------------------------------
# JSON helpers matching serde_json's output (the reference is written in Rust)
# --------------------------------------------------------------------------


def _fmt_float(x: float) -> str:
    """Format like serde_json (ryu): 1.0, 1e20, 1.5e-7, 0.0001."""
    if not math.isfinite(x):
        return "null"
    r = repr(x)
    sign = ""
    if r.startswith("-"):
        sign, r = "-", r[1:]
    mant, _, exp_s = r.partition("e")
    exp = int(exp_s) if exp_s else 0
    ip, _, fp = mant.partition(".")
    raw = ip + fp
    stripped = raw.lstrip("0")
    point = len(ip) + exp - (len(raw) - len(stripped))  # digits before the decimal point
    digits = stripped.rstrip("0")
    if not digits:
        return sign + "0.0"
    n = len(digits)
    if 0 <= point - n and point <= 16:
        body = digits + "0" * (point - n) + ".0"
    elif 0 < point <= 16:
        body = digits[:point] + "." + digits[point:]
    elif -5 < point <= 0:
        body = "0." + "0" * (-point) + digits
    elif n == 1:
        body = f"{digits}e{point - 1}"
    else:
        body = f"{digits[0]}.{digits[1:]}e{point - 1}"
    return sign + body


def serde_json(v: Any) -> str:
    """Compact JSON as serde_json's ``Display`` writes it (keys in insertion order)."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        # serde_json holds integers as i64/u64; larger ones become f64.
        return str(v) if -(2**63) <= v < 2**64 else _fmt_float(float(v))
    if isinstance(v, float):
        return _fmt_float(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, Mapping):
        return "{" + ",".join(json.dumps(str(k), ensure_ascii=False) + ":" + serde_json(x) for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(serde_json(x) for x in v) + "]"
    raise HarmonyError(f"not JSON-serializable: {type(v).__name__}")


def split_lines(s: str) -> list[str]:
    """Rust ``str::lines``: split on \\n, drop one trailing \\r per line, no final empty line."""
    if not s:
        return []
    parts = s.split("\n")
    if s.endswith("\n"):
        parts.pop()
    return [p[:-1] if p.endswith("\r") else p for p in parts]


# --------------------------------------------------------------------------
# JSON Schema -> TypeScript-like signature (reference: json_schema_to_typescript)
# --------------------------------------------------------------------------


def _get(schema: Any, key: str) -> Any:
    return schema.get(key) if isinstance(schema, Mapping) else None


def _has(schema: Any, key: str) -> bool:
    return isinstance(schema, Mapping) and key in schema


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _is_enum(schema: Any) -> bool:
    e = _get(schema, "enum")
    return isinstance(e, list) and len(e) > 0


def _nullable(schema: Any) -> bool:
    return _get(schema, "nullable") is True


def _default_comment(schema: Any, raw_enum_strings: bool) -> str:
    """``default: X``.  Strings are quoted (raw) unless the schema is an enum; then
    property-level defaults print the raw string, variant-level ones the JSON."""
    d = schema["default"]
    if isinstance(d, str) and not _is_enum(schema):
        return f'default: "{d}"'
    if isinstance(d, str) and raw_enum_strings:
        return f"default: {d}"
    return f"default: {serde_json(d)}"


def _one_of_variant(variant: Any, indent: str) -> str:
    t = json_schema_to_typescript(variant, indent + "   ")
    if _nullable(variant) and "null" not in t:
        t += " | null"
    return t


def json_schema_to_typescript(schema: Any, indent: str = "") -> str:
    """Render a JSON Schema the way harmony shows function parameters to the model."""
    one_of = _get(schema, "oneOf")
    if isinstance(one_of, list):
        out = []
        for variant in one_of:
            out.append(f"\n{indent} | ")
            out.append(_one_of_variant(variant, indent))
            comments = []
            desc = _str(_get(variant, "description"))
            if desc is not None:
                comments.append(desc)
            if _has(variant, "default"):
                comments.append(_default_comment(variant, raw_enum_strings=False))
            if comments:
                out.append(" // " + " ".join(comments))
        return "".join(out)

    ty = _get(schema, "type")
    if isinstance(ty, list):
        names = ["number" if t == "integer" else t for t in ty if isinstance(t, str)]
        if names:
            return " | ".join(names)
        return "any"
    if not isinstance(ty, str):
        return "any"

    if ty == "object":
        return _object_to_typescript(schema, indent)
    if ty == "string":
        enum = _get(schema, "enum")
        if isinstance(enum, list):
            vals = [f'"{v}"' for v in enum if isinstance(v, str)]
            if vals:
                return " | ".join(vals)
        return "string"
    if ty in ("number", "integer"):
        return "number"
    if ty == "boolean":
        return "boolean"
    if ty == "array":
        if _has(schema, "items"):
            return json_schema_to_typescript(schema["items"], indent) + "[]"
        return "Array<any>"
    return "any"


def _object_to_typescript(schema: Mapping[str, Any], indent: str) -> str:
    out: list[str] = []
    desc = _str(schema.get("description"))
    if desc is not None:
        out.append(f"{indent}// {desc}\n")
    out.append("{\n")
    props = schema.get("properties")
    if isinstance(props, Mapping):
        req = schema.get("required")
        required = {r for r in req if isinstance(r, str)} if isinstance(req, list) else set()
        for key, val in props.items():
            opt = "" if key in required else "?"
            title = _str(_get(val, "title"))
            if title is not None:
                out.append(f"{indent}// {title}\n{indent}//\n")
            one_of = _get(val, "oneOf")
            if one_of is None:
                d = _str(_get(val, "description"))
                if d is not None:
                    out.append(f"{indent}// {d}\n")
            examples = _get(val, "examples")
            if isinstance(examples, list) and examples:
                out.append(f"{indent}// Examples:\n")
                for ex in examples:
                    if isinstance(ex, str):
                        out.append(f'{indent}// - "{ex}"\n')
            if isinstance(one_of, list):
                out.append(_one_of_property(key, val, one_of, opt, indent))
                continue
            t = json_schema_to_typescript(val, indent + "    ")
            if _nullable(val) and "null" not in t:
                t += " | null"
            out.append(f"{indent}{key}{opt}: {t},")
            if one_of is None and _has(val, "default"):
                out.append(" // " + _default_comment(val, raw_enum_strings=True))
            out.append("\n")
    out.append(f"{indent}}}")
    return "".join(out)


def _one_of_property(key: str, val: Mapping[str, Any], variants: list[Any], opt: str, indent: str) -> str:
    out: list[str] = []
    prop_desc = _str(val.get("description"))
    # The reference skips the property description when the first variant repeats it.
    skip = prop_desc is not None and bool(variants) and _str(_get(variants[0], "description")) == prop_desc
    above = False
    if not skip and prop_desc is not None:
        out.append(f"{indent}// {prop_desc}\n")
        above = True
    if "default" in val:
        out.append(f"{indent}// {_default_comment(val, raw_enum_strings=True)}\n")
    out.append(f"{indent}{key}{opt}:\n")
    for i, variant in enumerate(variants):
        out.append(f"{indent} | ")
        out.append(_one_of_variant(variant, indent))
        comments = []
        vdesc = _str(_get(variant, "description"))
        if not (i == 0 and above) and vdesc is not None and vdesc != prop_desc:
            comments.append(vdesc)
        if _has(variant, "default"):
            comments.append(_default_comment(variant, raw_enum_strings=True))
        if comments:
            out.append(" // " + " ".join(comments))
        out.append("\n")
    out.append(f"{indent},\n")
    return "".join(out)
