"""docs/grafana-dashboard.json is a Grafana dashboard that imports anywhere and whose queries parse."""

from __future__ import annotations

import pytest

from tests import dashboard

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_every_panel_query_is_promql_that_names_its_metrics() -> None:
    """Each expr parses as PromQL (Grafana's intervals aside) and selects metrics by name."""
    queries = dashboard.expressions(dashboard.load())
    assert len(queries) >= 15
    for title, expr in queries:
        assert dashboard.metric_names(expr), f"{title}: {expr}"


def test_the_data_source_is_a_variable_of_the_dashboard() -> None:
    """No data source uid of one Grafana is baked in: every panel and query uses ${datasource}."""
    model = dashboard.load()
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard.panels(model):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert all(t["datasource"] == DATASOURCE for t in panel["targets"]), panel["title"]


def test_panels_have_unique_ids_and_fit_the_grid() -> None:
    """Ids are unique and every panel lies within Grafana's 24 columns."""
    every = list(dashboard.panels(dashboard.load()))
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids))
    for panel in every:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("sum(rate(a_total[$__rate_interval]))", {"a_total"}),
        (
            'histogram_quantile(0.9, sum by (le) (rate(b_bucket{c=~"$c"}[5m]))) / on() group_left c',
            {"b_bucket", "c"},
        ),
    ],
)
def test_metric_names_are_read_from_the_syntax_tree(expr: str, names: set[str]) -> None:
    """Functions, label names and Grafana variables are not mistaken for metrics."""
    assert dashboard.metric_names(expr) == names
