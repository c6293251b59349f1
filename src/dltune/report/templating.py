"""The reports' one Jinja2 environment (templates in report/templates, every value escaped) and the plain values
that its shared macros (templates/macros.html) lay out: table cells, inline plots, settings."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from dltune.report.cells import Column

__all__ = ["Cell", "InlinePlot", "TableRow", "header", "inline_plot", "key_values", "render_page"]

# autoescape on for every template: a name from a config or a result is text, never markup. StrictUndefined: a
# value the code forgot to pass fails the render instead of showing as nothing.
_ENV = Environment(loader=PackageLoader("dltune.report", "templates"), autoescape=True, undefined=StrictUndefined,
                   trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render_page(template: str, **values: Any) -> str:
    """Template `template` (a file in report/templates) rendered with `values`: an HTML document."""
    return _ENV.get_template(template).render(**values)


@dataclass(frozen=True)
class Cell:
    """A table's header or body cell: its text, class attribute and tooltip (None: no attribute)."""

    text: str
    css: str | None = None
    title: str | None = None
    swatch: str | None = None  # a colour shown as a square before the text: the plots' colour of the row


def header(columns: list[Column]) -> list[Cell]:
    """A table's header cells: numeric columns right-aligned."""
    return [Cell(c.name, "num" if c.numeric else None) for c in columns]


@dataclass(frozen=True)
class TableRow:
    """A table's body row: its cells, class attribute and tooltip (None: no attribute)."""

    cells: list[Cell]
    css: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class InlinePlot:
    """A plot embedded in the page: `src` a data: URI of its PNG, `key` its data-plot attribute (what tests and
    readers find it by)."""

    key: str
    src: str
    alt: str
    caption: str


def inline_plot(key: str, png: bytes, alt: str, caption: str) -> InlinePlot:
    # base64 holds only A-Z, a-z, 0-9, +, / and =, none of which escaping changes: the URI needs no Markup
    return InlinePlot(key, "data:image/png;base64," + base64.b64encode(png).decode("ascii"), alt, caption)


def _text(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return "—" if value is None else str(value)


def key_values(mapping: Mapping[Any, Any]) -> list[tuple[str, str]]:
    """A mapping's items as text, for a settings list: containers as JSON, None as a dash."""
    return [(str(k), _text(v)) for k, v in mapping.items()]
