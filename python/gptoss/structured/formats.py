"""The request fields of structured outputs, validated: `response_format`, `tool_choice`, tools.

Accepted shapes (OpenAI's Chat Completions and Responses APIs; the Python API takes the same):

* response_format: None, ``{"type": "text"}``, ``{"type": "json_object"}``,
  ``{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}``
  (Chat Completions), the flat ``{"type": "json_schema", "name", "schema", "strict"}``
  (Responses ``text.format``), or a Pydantic model class (its ``model_json_schema()``).
* tool_choice: None (not given), ``"auto"``, ``"none"``, ``"required"``,
  ``{"type": "function", "function": {"name": ...}}`` or ``{"type": "function", "name": ...}``.
* tools: harmony `Tool`s or dicts ``{"type": "function", "function": {"name", "description",
  "parameters", "strict"}}`` (or the same keys flat); ``strict: true`` asks for arguments that
  validate against ``parameters``.

Everything invalid raises `ValueError` naming the field, before anything is compiled.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

__all__ = [
    "OutputFormat",
    "ToolChoice",
    "FunctionSpec",
    "parse_response_format",
    "parse_tool_choice",
    "parse_tools",
    "check_budget",
]

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # OpenAI's name rule (plus '.')


@dataclass(frozen=True)
class OutputFormat:
    """What the final channel's content must be. kind: "text" (anything), "json_object" (a JSON
    object) or "json_schema" (`schema`)."""

    kind: str
    schema: Optional[Mapping[str, Any]] = None
    name: Optional[str] = None
    strict: bool = False
    description: Optional[str] = None

    @property
    def constrains(self) -> bool:
        return self.kind != "text"

    @property
    def content_schema(self) -> Optional[Mapping[str, Any]]:
        """The JSON schema the final content is held to (None for text)."""
        if self.kind == "json_object":
            return {"type": "object"}
        return self.schema


@dataclass(frozen=True)
class ToolChoice:
    """mode: "auto" (the model decides), "none" (no tool call), "required" (some function must be
    called), "function" (`name` must be called)."""

    mode: str
    name: Optional[str] = None


@dataclass(frozen=True)
class FunctionSpec:
    """A function tool as the constraint sees it."""

    name: str
    parameters: Optional[Mapping[str, Any]] = None
    strict: bool = False


def _schema_of(value: Any, where: str) -> Mapping[str, Any]:
    if isinstance(value, bool) and value:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a JSON schema object, got {type(value).__name__}")
    return value


def parse_response_format(value: Any) -> Optional[OutputFormat]:
    """The `response_format` argument as an `OutputFormat` (None when not given)."""
    if value is None:
        return None
    if isinstance(value, OutputFormat):
        return value
    if isinstance(value, type) and hasattr(value, "model_json_schema"):  # a Pydantic model
        return OutputFormat("json_schema", value.model_json_schema(), value.__name__, True)
    if not isinstance(value, Mapping):
        raise ValueError("response_format must be a dict such as {'type': 'json_schema', "
                         f"'json_schema': {{...}}}}, got {type(value).__name__}")
    kind = value.get("type")
    if kind == "text":
        return OutputFormat("text")
    if kind == "json_object":
        return OutputFormat("json_object")
    if kind != "json_schema":
        raise ValueError(f"response_format type {kind!r} is not supported "
                         "(expected 'text', 'json_object' or 'json_schema')")
    spec = value.get("json_schema", value)  # Chat Completions nests it; Responses is flat
    if not isinstance(spec, Mapping):
        raise ValueError("response_format.json_schema must be an object with 'name' and 'schema'")
    if "schema" not in spec:
        raise ValueError("response_format json_schema needs a 'schema'")
    name = spec.get("name", "response")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"response_format json_schema name {name!r} must be 1-64 letters, digits, "
                         "'_', '-' or '.'")
    strict = spec.get("strict", False)
    if strict is None:
        strict = False
    if not isinstance(strict, bool):
        raise ValueError(f"response_format json_schema strict must be a boolean, got {strict!r}")
    desc = spec.get("description")
    if desc is not None and not isinstance(desc, str):
        raise ValueError("response_format json_schema description must be a string")
    return OutputFormat("json_schema", _schema_of(spec["schema"], "response_format json_schema "
                                                   "'schema'"), name, strict, desc)


def parse_tool_choice(value: Any) -> Optional[ToolChoice]:
    """The `tool_choice` argument as a `ToolChoice` (None when not given)."""
    if value is None:
        return None
    if isinstance(value, ToolChoice):
        return value
    if isinstance(value, str):
        if value in ("auto", "none", "required"):
            return ToolChoice(value)
        raise ValueError(f"tool_choice {value!r} is not one of 'auto', 'none', 'required' or "
                         "{'type': 'function', 'function': {'name': ...}}")
    if isinstance(value, Mapping) and value.get("type") == "function":
        fn = value.get("function", value)
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if not isinstance(name, str) or not name:
            raise ValueError("tool_choice {'type': 'function'} needs the function's name")
        return ToolChoice("function", name)
    raise ValueError(f"tool_choice {value!r} is not supported (expected 'auto', 'none', "
                     "'required' or {'type': 'function', 'function': {'name': ...}})")


def parse_tools(tools: Sequence[Any]) -> dict[str, FunctionSpec]:
    """Function tools by name, with their strictness (harmony `Tool`s are not strict)."""
    out: dict[str, FunctionSpec] = {}
    for t in tools or ():
        if isinstance(t, Mapping):
            if t.get("type", "function") != "function":
                continue
            fn = t.get("function", t)
            name, params = fn.get("name"), fn.get("parameters")
            strict = fn.get("strict", t.get("strict", False))
        else:
            name, params, strict = getattr(t, "name", None), getattr(t, "parameters", None), False
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"tool name {name!r} must be 1-64 letters, digits, '_', '-' or '.' "
                             "(it is written into the harmony header)")
        if strict is None:
            strict = False
        if not isinstance(strict, bool):
            raise ValueError(f"tool {name!r}: strict must be a boolean, got {strict!r}")
        if params is not None:
            params = _schema_of(params, f"tool {name!r} parameters")
        out[name] = FunctionSpec(name, params, strict)
    return out


def check_budget(value: Any) -> Optional[int]:
    """`thinking_token_budget`: None (no limit) or an integer >= 0 (0 = no reasoning)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"thinking_token_budget must be an integer >= 0 or None, got {value!r}")
    return int(value)
