"""Reading the Grafana dashboard's PromQL, for the tests that check it against
what the service really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy/grafana/rlm-dashboard.json"

# PromQL words that look like metric names but are not.
_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)  # dashboard variables
    # Grafana's label_values(metric, label): keep the metric, drop the label.
    expr = re.sub(r"label_values\(([^,)]*),[^)]*\)", r"(\1)", expr)
    # Numbers and durations (0.95, 5m, 1h30m).
    expr = re.sub(r"(?<![A-Za-z0-9_:])\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])*", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group(0)
        rest = expr[match.end() :].lstrip()
        if rest.startswith("("):  # a function call
            continue
        if word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def dashboard_queries(path: Path = DASHBOARD) -> list[str]:
    queries: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                # "query" is also a plain word in the datasource variable.
                is_query = key in ("expr", "definition") or (key == "query" and "(" in str(value))
                if is_query and isinstance(value, str):
                    queries.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(path.read_text()))
    return queries
