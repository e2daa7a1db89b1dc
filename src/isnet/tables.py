"""Tables of results as text: fixed-width for terminals, Markdown for files and reports.

Rows are mappings from column title to an already formatted cell; the first row's keys give
the columns. The first column (a name) is left-aligned, the others (numbers) right-aligned.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["csv_number", "csv_text", "markdown_table", "percent", "text_table"]


def percent(value: float | None, std: float | None = None) -> str:
    """A share as a percentage with one decimal (``-`` for None), with ``± std`` when given."""
    if value is None:
        return "-"
    text = f"{100 * value:.1f}"
    return text + (f" ± {100 * std:.1f}" if std is not None else "")


def _columns(rows: Sequence[Mapping[str, str]]) -> list[str]:
    if not rows:
        raise ValueError("a table needs at least one row")
    return list(rows[0])


def text_table(rows: Sequence[Mapping[str, str]], widths: Mapping[str, int] | None = None,
               titles: Mapping[str, str] | None = None) -> str:
    """A fixed-width table with a rule under the header.

    ``widths`` gives a column's width (default: its longest cell or title); ``titles`` shows a
    column under another title than its key (several columns may share one); columns are
    separated by one space.
    """
    columns = _columns(rows)
    shown = {c: c for c in columns} | dict(titles or {})
    widths = {c: max(len(shown[c]), *(len(r.get(c, "")) for r in rows)) for c in columns} | dict(widths or {})

    def line(cells: Mapping[str, str]) -> str:
        parts = [f"{cells.get(c, ''):<{widths[c]}}" if i == 0 else f"{cells.get(c, ''):>{widths[c]}}"
                 for i, c in enumerate(columns)]
        return " ".join(parts).rstrip()

    head = line(shown)
    return "\n".join([head, "-" * len(head), *(line(r) for r in rows)])


def markdown_table(rows: Sequence[Mapping[str, str]]) -> str:
    """A Markdown (GitHub) table."""
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    lines += ["| " + " | ".join(r.get(c, "") for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def csv_number(value: float | None) -> str:
    """A number in a CSV cell: six significant digits, empty for None."""
    return "" if value is None else f"{value:.6g}"


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A CSV file's text: ``header``, then ``rows`` (newline-terminated lines)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
