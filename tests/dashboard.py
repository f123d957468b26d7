"""Reading docs/grafana-dashboard.json: its panels, their PromQL, the metric names they select."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json"
#: Grafana's own variables are not PromQL; these stand in for them before parsing.
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def load() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows (collapsed rows hold theirs) included."""
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects; ``ValueError`` when it is not PromQL."""
    for variable, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(variable, value)
    found: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if not node.name:
                raise ValueError(f"a selector without a metric name in {expr!r}")
            found.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def variable_metrics(dashboard: dict[str, Any]) -> set[str]:
    """Metrics named by the template variables' ``label_values(metric, label)`` queries."""
    names = set()
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else ""
        if text.startswith("label_values("):
            names.add(text.removeprefix("label_values(").split(",")[0].strip())
    return names
