"""A small HCL (Terraform) writer: Python values in, deterministic `.tf` text out.

Templates are built as data (blocks, attributes, expressions) rather than text with
holes, so quoting is right by construction and the same inputs give the same bytes.

Values map as follows: `str` is a quoted template string (`${...}` inside it is an
intentional interpolation), `Expr` is written as is (references, function calls),
`bool`/`int` are literals, `list` is a tuple, `dict` is an object, `Nested(...)` (or a
list of them) under a key is a nested block of that name, `Heredoc` is a `<<-EOT` string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

INDENT = "  "
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Expr:
    """An HCL expression written verbatim: `aws_vpc.main.id`, `var.region`, `cidrsubnet(...)`."""

    text: str


@dataclass(frozen=True)
class Heredoc:
    """A multi-line string written as an indented heredoc; `${` is interpolation."""

    text: str


@dataclass(frozen=True)
class Nested:
    """A nested block (`ingress { ... }`); its name is the key it is stored under."""

    body: Mapping[str, Any]
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Block:
    """A top-level block: `resource "aws_vpc" "main" { ... }`, with optional comments.

    `comments` are written as the first lines of the body, which is where checkov looks
    for `checkov:skip=ID:reason` annotations.
    """

    kind: str
    labels: tuple[str, ...]
    body: Mapping[str, Any]
    comments: tuple[str, ...] = field(default=())
    doc: str = ""


def string(text: str) -> str:
    """Quote `text` as an HCL template string (interpolations kept, escapes applied)."""
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    out = out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{out}"'


def literal(text: str) -> str:
    """Escape `${` and `%{` so HCL keeps them as literal characters (shell scripts)."""
    return text.replace("${", "$${").replace("%{", "%%{")


def expression(value: Any, depth: int = 0) -> str:
    """The HCL expression for a Python value (as an attribute value at `depth`)."""
    return _value(value, depth)


def _key(name: str) -> str:
    return name if _IDENTIFIER.match(name) else string(name)


def _value(value: Any, depth: int) -> str:
    pad = INDENT * depth
    if isinstance(value, Expr):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return string(value)
    if isinstance(value, Heredoc):
        body = value.text if value.text.endswith("\n") else value.text + "\n"
        lines = [(pad + INDENT + line) if line else "" for line in body.splitlines()]
        return "<<-EOT\n" + "\n".join(lines) + "\n" + pad + INDENT + "EOT"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        items = [_value(item, depth + 1) for item in value]
        if all("\n" not in item for item in items) and sum(map(len, items)) < 60:
            return "[" + ", ".join(items) + "]"
        inner = "".join(f"{pad}{INDENT}{item},\n" for item in items)
        return "[\n" + inner + pad + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        width = max(len(_key(k)) for k in value)
        inner = "".join(
            f"{pad}{INDENT}{_key(k).ljust(width)} = {_value(v, depth + 1)}\n"
            for k, v in value.items()
        )
        return "{\n" + inner + pad + "}"
    raise TypeError(f"no HCL form for {type(value).__name__}")


def _is_block(value: Any) -> bool:
    return isinstance(value, Nested) or (
        isinstance(value, list | tuple) and bool(value) and isinstance(value[0], Nested)
    )


def _body(body: Mapping[str, Any], depth: int, comments: Iterable[str] = ()) -> list[str]:
    pad = INDENT * depth
    lines = [f"{pad}#{comment}" for comment in comments]
    attrs = [(k, v) for k, v in body.items() if not _is_block(v)]
    width = max((len(_key(k)) for k, _ in attrs), default=0)
    for key, value in body.items():
        if _is_block(value):
            for nested in [value] if isinstance(value, Nested) else value:
                labels = "".join(f" {string(label)}" for label in nested.labels)
                lines.append(f"{pad}{key}{labels} {{")
                lines.extend(_body(nested.body, depth + 1))
                lines.append(f"{pad}}}")
        else:
            lines.append(f"{pad}{_key(key).ljust(width)} = {_value(value, depth)}")
    return lines


def dumps(blocks: Iterable[Block], header: str = "") -> str:
    """The text of a `.tf` file: an optional `#` header, then each block, blank-separated."""
    parts: list[str] = []
    if header:
        parts.append("".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()))
    for block in blocks:
        doc = "".join(f"# {line}".rstrip() + "\n" for line in block.doc.splitlines())
        labels = "".join(f" {string(label)}" for label in block.labels)
        lines = [f"{block.kind}{labels} {{", *_body(block.body, 1, block.comments), "}"]
        parts.append(doc + "\n".join(lines) + "\n")
    return "\n".join(parts)


def resource(kind: str, name: str, body: Mapping[str, Any], **extra: Any) -> Block:
    return Block("resource", (kind, name), body, **extra)


def data(kind: str, name: str, body: Mapping[str, Any], **extra: Any) -> Block:
    return Block("data", (kind, name), body, **extra)


def variable(name: str, body: Mapping[str, Any]) -> Block:
    return Block("variable", (name,), body)


def output(name: str, value: Any, description: str, sensitive: bool = False) -> Block:
    body: dict[str, Any] = {"description": description, "value": value}
    if sensitive:
        body["sensitive"] = True
    return Block("output", (name,), body)
