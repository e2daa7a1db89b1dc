"""A self-contained HTML report: one file with inline CSS and figures embedded as PNG.

A report is a title and sections; a section holds figures, text (paragraphs separated by blank
lines), lists (of strings: one bullet each; a list of short items, such as ``option = value``
lines, is set in columns) and tables (lists of dicts). Everything is text the browser wraps to
the page: there are no preformatted blocks, so no line runs off the right edge.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from .figures import figure_to_png
from .outputs import write_text

__all__ = ["write_html_report"]

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
img { max-width: 100%; height: auto; display: block; margin: 1em 0; }
p, li { overflow-wrap: break-word; }
li { margin: .25em 0; }
ul.short { columns: 16em; column-gap: 2em; }
ul.short li { break-inside: avoid; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; margin: 1em 0; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th { background: #eee; }
td:first-child, th:first-child, td.words { text-align: left; }
"""


def _html_text(text: str) -> str:
    """Paragraphs, separated by blank lines; a single line break is a space, as in Markdown."""
    blocks = (" ".join(block.split()) for block in text.split("\n\n"))
    return "\n".join(f"<p>{html.escape(block)}</p>" for block in blocks if block)


_SHORT_ITEM = 40
"""Characters up to which list items count as short: such a list is set in columns."""


def _html_list(items: Sequence[str]) -> str:
    short = ' class="short"' if max(len(item) for item in items) <= _SHORT_ITEM else ""
    return f"<ul{short}>\n" + "\n".join(f"<li>{html.escape(item)}</li>" for item in items) + "\n</ul>"


def _html_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return html.escape(f"{value:.4g}")
    return html.escape(str(value))


def _is_words(value: Any) -> bool:
    """A cell of words (a verdict, a note), set flush left; numbers, with units or intervals, stay flush right."""
    return isinstance(value, str) and " " in value.strip() and any(ch.isalpha() for ch in value)


def _html_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p><em>(no rows)</em></p>"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    words = ' class="words"'
    body = "\n".join(
        "<tr>" + "".join(f"<td{words if _is_words(row.get(c)) else ''}>{_html_cell(row.get(c))}</td>"
                         for c in columns) + "</tr>" for row in rows
    )
    return f'<div class="wide"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table></div>'


def _html_item(item: Any) -> str:
    if isinstance(item, Figure):
        encoded = base64.b64encode(figure_to_png(item)).decode("ascii")
        return f'<img alt="figure" src="data:image/png;base64,{encoded}">'
    if isinstance(item, str):
        return _html_text(item)
    if isinstance(item, list) and item and all(isinstance(line, str) for line in item):
        return _html_list(item)
    if isinstance(item, list) and all(isinstance(row, Mapping) for row in item):
        return _html_table(item)
    raise TypeError(f"cannot render a {type(item).__name__} in a report; use a Figure, a str, a list of str or a "
                    "list of dicts")


def write_html_report(path: str | Path, title: str, sections: Sequence[tuple[str, list]]) -> Path:
    """Write one self-contained HTML file (inline CSS, PNGs embedded as base64).

    Parameters
    ----------
    path : str or Path
        Output file; parent folders are created.
    title : str
        Page title and top heading.
    sections : sequence of (heading, items)
        Each item is a :class:`Figure`, a string (escaped; paragraphs separated by blank
        lines), a list of strings (a bulleted list) or a list of dicts (an HTML table whose
        columns are the union of the keys; a wide one scrolls inside the page).

    Returns
    -------
    Path
        The file written.
    """
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, items in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body.extend(_html_item(item) for item in items)
    document = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    return write_text(path, document)
