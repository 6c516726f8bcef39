"""A small Markdown builder: documents of message ids, rendered once per language.

A :class:`Doc` holds blocks whose parameters are already formatted strings (numbers
through :func:`fmt`); :func:`render` fills one language's templates with those same
strings, so a number exists once for every language. :func:`table` is the one way a
Markdown table is written (the report and the study both use it).
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable
from typing import Any

from .runs import format_number


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; ``|`` inside a cell is escaped and a newline becomes a space.

    >>> print(table(["a", "b"], [["1", "x|y"]]))
    | a | b |
    |---|---|
    | 1 | x\\|y |
    """
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def placeholders(template: str) -> set[str]:
    """The ``str.format`` fields of a template (both languages must use the same ones)."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def fmt(value: Any) -> str:
    """One spelling of a number for both languages.

    >>> [fmt(x) for x in (3, 0.5538277, -4.013765, 1.2107e-27, 254950.8, float("nan"), float("inf"), 0.0)]
    ['3', '0.5538', '-4.014', '1.21e-27', '2.55e+05', 'NaN', 'inf', '0']
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return format_number(value, small_digits=3)


Part = tuple[str, dict[str, str]]


class Prose(str):
    """English prose written by the tracer or the checker (a chain, a detail, a reason).

    A catalogue cannot hold it, because it is built at run time; :func:`render` passes it
    through the language's ``translate`` function instead (see :mod:`.tracer_zh`).
    """


@dataclasses.dataclass
class Block:
    kind: str  # "title", "h2", "p", "bullets", "table", "code", "image"
    parts: list[Any] = dataclasses.field(default_factory=list)
    text: str = ""


class Doc:
    """Blocks of message ids and formatted parameters; rendered once per language."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []

    def title(self, msg: str, **params) -> None:
        self.blocks.append(Block("title", [(msg, _strings(params))]))

    def h2(self, msg: str, **params) -> None:
        self.blocks.append(Block("h2", [(msg, _strings(params))]))

    def p(self, *parts: Part) -> None:
        parts = [part for part in parts if part]
        if parts:
            self.blocks.append(Block("p", list(parts)))

    def bullets(self, items: list[list[Part]]) -> None:
        items = [[part for part in item if part] for item in items]
        if any(items):
            self.blocks.append(Block("bullets", [item for item in items if item]))

    def table(self, headers: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(Block("table", [headers, rows]))

    def code(self, text: str) -> None:
        self.blocks.append(Block("code", text=text))

    def image(self, path: str, *caption: Part) -> None:
        self.blocks.append(Block("image", list(caption), text=path))


def m(msg: str, **params) -> Part:
    """A message part: its id and its parameters as strings (numbers through :func:`fmt`)."""
    return msg, _strings(params)


def _strings(params: dict[str, Any]) -> dict[str, str]:
    return {k: (v if isinstance(v, str) else fmt(v)) for k, v in params.items()}


def render(doc: Doc, messages: dict[str, str], *, joiner: str = " ",
           translate: Callable[[str], str] | None = None) -> str:
    """The Markdown of ``doc`` with ``messages`` (one language's catalogue); ``joiner`` joins
    the parts of a paragraph (a space, or nothing for Chinese); ``translate`` rewrites the
    :class:`Prose` values (tracer and checker text)."""

    def prose(value: Any) -> Any:
        return translate(value) if translate is not None and isinstance(value, Prose) else value

    def resolve(params: dict[str, str]) -> dict[str, str]:
        return {k: (messages[v[1:]] if v.startswith("@") and v[1:] in messages else prose(v))
                for k, v in params.items()}

    def text(parts: list[Part]) -> str:
        return joiner.join(messages[msg].format(**resolve(params)) for msg, params in parts)

    def cell(value: Any) -> str:
        return text([value]) if isinstance(value, tuple) else str(prose(value))

    out: list[str] = []
    for block in doc.blocks:
        if block.kind == "title":
            out.append(f"# {text(block.parts)}")
        elif block.kind == "h2":
            out.append(f"## {text(block.parts)}")
        elif block.kind == "p":
            out.append(text(block.parts))
        elif block.kind == "bullets":
            out.append("\n".join(f"- {text(item)}" for item in block.parts))
        elif block.kind == "table":
            headers, rows = block.parts
            out.append(table([messages[h] for h in headers], [[cell(v) for v in row] for row in rows]))
        elif block.kind == "code":
            out.append(f"```\n{prose(block.text)}\n```")
        elif block.kind == "image":
            caption = text(block.parts)
            out.append(f"![{caption}]({block.text})\n\n*{caption}*")
    return "\n\n".join(out) + "\n"


