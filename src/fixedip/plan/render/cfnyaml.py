"""A small YAML writer for CloudFormation templates (the standard library has none).

Handles exactly what templates hold (mappings, sequences, strings, numbers, booleans)
with intrinsic functions in their long form (`Ref`, `Fn::GetAtt`, `Fn::Sub` …), so any
YAML parser reads the result. Scalars that could be mistaken for another type are
double-quoted; multi-line strings become literal
blocks (`|`), which keeps user-data scripts readable. Same input, same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

INDENT = "  "
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]*\Z")
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*(::[A-Za-z0-9_.-]+)*\Z")
# Plain words YAML 1.1 (PyYAML, cfn-lint) would read as booleans or null.
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.match(value) and value.lower() not in _RESERVED and not value.endswith(":"):
            return value
        return _quote(value)
    raise TypeError(f"no YAML form for {type(value).__name__}")


def _quote(text: str) -> str:
    """A double-quoted scalar; everything outside printable ASCII is escaped (`\\U`
    for characters beyond the BMP: JSON's surrogate pairs are not YAML)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t"}


def _key(key: str) -> str:
    return key if _PLAIN_KEY.match(key) and key.lower() not in _RESERVED else _quote(key)


def _block_text(text: str, depth: int) -> str | None:
    """A literal block for multi-line text, or None when a quoted scalar is safer."""
    if "\n" not in text or "\r" in text or text.startswith((" ", "\n")):
        return None
    if any(line != line.rstrip() for line in text.split("\n")):
        return None
    if not all(ch.isprintable() or ch in "\n\t" for ch in text) or "\t" in text[:1]:
        return None
    body = text.rstrip("\n")
    trailing = len(text) - len(body)
    indicator = {0: "|-", 1: "|"}.get(trailing)
    if indicator is None:
        return None
    pad = INDENT * depth
    return indicator + "\n" + "\n".join(pad + line if line else "" for line in body.split("\n"))


def _node(value: Any, depth: int) -> list[str]:
    """Lines for a mapping or sequence at `depth`."""
    pad = INDENT * depth
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            lines.extend(_entry(f"{pad}{_key(key)}:", item, depth))
    else:
        for item in value:
            lines.extend(_entry(f"{pad}-", item, depth))
    return lines


def _entry(prefix: str, item: Any, depth: int) -> list[str]:
    if isinstance(item, Mapping | list | tuple):
        if not item:
            return [f"{prefix} {'{}' if isinstance(item, Mapping) else '[]'}"]
        lines = _node(item, depth + 1)
        if prefix.endswith("-") and isinstance(item, Mapping):
            # "- Key: value" on the dash line, the mapping's other keys aligned below it
            return [f"{prefix} {lines[0].lstrip()}", *lines[1:]]
        return [prefix, *lines]
    if isinstance(item, str):
        block = _block_text(item, depth + 1)
        if block is not None:
            return [f"{prefix} {block}"]
    return [f"{prefix} {_scalar(item)}"]


def dumps(template: Mapping[str, Any], header: str = "") -> str:
    """YAML text for `template`, top-level sections separated by a blank line."""
    parts = ["".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())]
    for key, value in template.items():
        parts.append("\n".join(_entry(f"{_key(key)}:", value, 0)) + "\n")
    return "\n".join(part for part in parts if part)
