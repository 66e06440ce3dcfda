"""The problems table that `data import` and `data export` print, and their report records."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pipeline.data.formats.base import Problem


def format_problems(problems: list[Problem], limit: int = 20) -> str:
    """The problems as an aligned text table (the first ``limit``) and counts per kind."""
    if not problems:
        return "no problems"
    header = ("kind", "action", "source", "item", "detail")
    rows = [header] + [
        (p.kind, p.action, p.source, p.item, shorten(p.detail, 90)) for p in problems[:limit]
    ]
    widths = [max(len(row[col]) for row in rows) for col in range(4)]
    lines = [
        "  ".join([*(row[col].ljust(widths[col]) for col in range(4)), row[4]]) for row in rows
    ]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    counts = Counter(p.kind for p in problems)
    lines.append("by kind: " + ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items())))
    return "\n".join("  " + line.rstrip() for line in lines)


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, an ellipsis marking the cut."""
    return text if len(text) <= width else text[: width - 3] + "..."


def problem_records(report: dict[str, Any]) -> list[Problem]:
    """The problems of an import or export report, back as ``Problem`` records."""
    return [Problem(**record) for record in report["problems"]]
