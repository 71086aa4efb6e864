"""Class names go into Markdown tables escaped (issue 33, item 12): a ``|`` in a name must not shift the
numbers into other columns, and ``<script>`` must not reach the W&B Report or the comparison page as HTML."""

from __future__ import annotations

import re

from toolkit.reporting.html import md_cell
from toolkit.reporting.recipe_comparison import markdown_tables
from toolkit.reporting.wandb_headline import classification_markdown

HOSTILE = ["cat | 0.99 | 0.99", "<script>alert(1)</script>"]
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def cells(line: str) -> int:
    return len(UNESCAPED_PIPE.findall(line))


def per_class(precision: float) -> dict:
    return {name: {"precision": precision, "recall": 0.5, "f1": 0.5, "support": 3} for name in HOSTILE}


def test_md_cell_escapes_cell_breaks_markup_and_line_ends():
    assert md_cell("cat | 0.99") == "cat \\| 0.99"
    assert md_cell("<b>x</b>\nnext & *y*") == "\\<b\\>x\\</b\\> next &amp; \\*y\\*"


def test_the_w_and_b_classification_table_keeps_every_row_in_its_columns():
    runs = [{"class_names": HOSTILE, "per_class": per_class(0.9), "num_samples": 6, "accuracy": 0.5}]
    lines = classification_markdown(runs)
    assert len({cells(line) for line in lines if line.startswith("|")}) == 1, lines
    assert not any("<script>" in line for line in lines)


def test_the_recipe_comparison_table_keeps_every_row_in_its_columns():
    stat = {"mean": 0.5, "std": 0.1}
    summary = {"per_class": {name: {"precision": stat, "recall": stat, "f1": stat, "support": 3} for name in HOSTILE}}
    report = {
        "recipes": {"a": {"summary": summary, "runs": []}},
        "split": "test",
        "test_samples": 6,
        "epochs": 1,
        "seeds": [0],
        "verdicts": [],
    }
    lines = markdown_tables(report).splitlines()
    rows = [line for line in lines if line.startswith("| ") and "precision" not in line and "metric" not in line]
    header = next(line for line in lines if "a precision" in line)
    class_rows = [line for line in rows if "cat" in line or "script" in line]
    assert len(class_rows) == 2 and all(cells(line) == cells(header) for line in class_rows), class_rows
    assert "<script>" not in "\n".join(lines)
