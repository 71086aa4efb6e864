"""Small HTML building blocks for the self-contained report: escaping, number cells, tables.

Every value from a file is escaped here, so the sections never build markup from raw text.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

MAX_LIST_ITEMS = 20

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1150px;padding:0 18px 40px;color:#1d1d1f;line-height:1.45}
h1{margin:22px 0 4px;font-size:1.7em}h2{border-bottom:2px solid #e3e3e8;padding-bottom:4px;margin-top:34px}
h3{margin:22px 0 8px}.muted{color:#666;font-size:.9em}
.banner{background:#b71c1c;color:#fff;padding:14px 18px;border-radius:6px;font-weight:600;font-size:1.1em;margin:14px 0}
.warn{background:#fff4e5;border-left:4px solid #ef6c00;padding:8px 12px;margin:10px 0}
.missing{background:#f5f5f7;border-left:4px solid #999;padding:8px 12px;color:#444;margin:10px 0}
table{border-collapse:collapse;margin:8px 0 14px;font-size:.92em}
th,td{border:1px solid #d9d9de;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f2f2f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f9;border:1px solid #e3e3e8;padding:10px;overflow-x:auto;font-size:.88em}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}
.scroll{max-height:420px;overflow-y:auto;display:inline-block}
figure{margin:16px 0;display:inline-block;max-width:100%}figure img{max-width:100%;border:1px solid #e3e3e8}
figcaption{font-size:.88em;color:#444}nav a{margin-right:12px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}.card{border:1px solid #d9d9de;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:1.35em}.bad{color:#c62828}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


_MARKDOWN_SPECIAL = "\\`*_[]|#<>!~"


def md_cell(value: Any) -> str:
    """Text from a file (a class name) as one Markdown table cell that shows exactly that text.

    A ``|`` would start a new cell and shift every number after it; markup characters would format
    or link; ``<script>`` would reach the page as HTML. All are backslash-escaped, ``&`` written as
    an entity, and line breaks (which end a table row) become spaces.
    """
    text = " ".join(str(value).splitlines()).replace("&", "&amp;")
    return "".join("\\" + ch if ch in _MARKDOWN_SPECIAL else ch for ch in text)


def cell_text(value: Any, digits: int = 4) -> str:
    """Numbers for humans: n/a for missing or NaN, integers as they are."""
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        if abs(value) >= 100:  # throughput, seconds
            return f"{value:,.1f}"
        if value != 0 and abs(value) < 0.001:  # learning rates
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return esc(value)


class Published(str):
    """A number as it was published (e.g. '0.684'): shown verbatim, aligned as a number."""


def finite_numbers(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def load_json(path: Path) -> tuple[Optional[Any], Optional[str]]:
    """(data, None), or (None, why not) for a missing or unreadable file."""
    if not path.is_file():
        return None, f"{path.name} not found"
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, ValueError) as err:
        return None, f"{path.name} could not be read ({err})"


def missing(text: str) -> str:
    return f'<div class="missing">{esc(text)}</div>'


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric_from: int = 1) -> str:
    """A table; cells are formatted with ``cell_text`` (already-escaped), columns from ``numeric_from`` right-aligned."""
    out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            numeric = isinstance(cell, (int, float, Published)) and not isinstance(cell, bool)
            cls = ' class="num"' if i >= numeric_from and numeric else ""
            cells.append(f"<td{cls}>{cell_text(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def kv_table(pairs: Iterable[tuple[str, Any]]) -> str:
    return table(["", "value"], pairs)


def render_value(value: Any) -> str:
    """Nested JSON as small tables; long lists are cut with a count."""
    if isinstance(value, dict):
        if not value:
            return "<i>empty</i>"
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{render_value(v)}</td></tr>" for k, v in value.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list):
        if not value:
            return "<i>none</i>"
        if all(not isinstance(v, (dict, list)) for v in value) and len(value) <= 8:
            return esc(", ".join(cell_text(v) if isinstance(v, float) else str(v) for v in value))
        items = "".join(f"<li>{render_value(v)}</li>" for v in value[:MAX_LIST_ITEMS])
        more = f"<li><i>... and {len(value) - MAX_LIST_ITEMS} more</i></li>" if len(value) > MAX_LIST_ITEMS else ""
        return f"<ul>{items}{more}</ul>"
    return cell_text(value)


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'
