"""ray_configs/grafana_dashboard.json: well-formed, and every query asks only for metrics the platform exports."""

from __future__ import annotations

import json
import re

from tests.helpers import ROOT

DASHBOARD = ROOT / "ray_configs" / "grafana_dashboard.json"

COUNTERS = {"maas_requests", "maas_tokens", "maas_admissions_denied"}
HISTOGRAMS = {"maas_request_latency_seconds", "maas_ttft_seconds", "maas_tpot_seconds", "maas_prompt_tokens",
              "maas_completion_tokens"}
GAUGES = {"maas_requests_in_flight"}
# The series names Prometheus holds for them (prometheus_client appends _total to counters).
SERIES = ({f"{c}_total" for c in COUNTERS} | GAUGES
          | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")})
LABELS = {"project", "service", "endpoint", "key_id", "model", "code", "kind", "reason", "le"}
FILTER = 'project=~"$project", service=~"$service", endpoint=~"$endpoint"'


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _balanced(expr: str) -> bool:
    stack, pairs = [], {")": "(", "}": "{", "]": "["}
    for ch in re.sub(r'"[^"]*"', '""', expr):  # brackets inside label matchers' strings don't count
        if ch in "({[":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def test_dashboard_shape():
    board = _dashboard()
    assert board["schemaVersion"] == 39 and board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("project", "service", "endpoint"):
        var = variables[name]
        assert var["type"] == "query" and var["includeAll"] and var["allValue"] == ".*"  # "" endpoints match All
        assert var["datasource"]["uid"] == "${DS_PROMETHEUS}"
    panels = list(_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"] for p in panels).lower()
    for wanted in ("requests per minute", "tpm", "failure rate", "errors per code", "ttft", "tpot", "latency",
                   "prompt tokens", "completion tokens", "in flight", "denials"):
        assert wanted in titles, wanted
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_expression_uses_only_the_exported_metrics():
    board = _dashboard()
    seen = set()
    exprs = [(p["title"], t["expr"]) for p in _panels(board["panels"]) for t in p.get("targets", [])]
    exprs += [(v["name"], v["query"]) for v in board["templating"]["list"] if v["type"] == "query"]
    assert exprs
    for where, expr in exprs:
        names = set(re.findall(r"\bmaas_[a-z_]+", expr))
        assert names, f"{where}: no maas_ metric in {expr!r}"
        assert names <= SERIES, f"{where}: unknown series {names - SERIES} in {expr!r}"
        seen |= names
        assert _balanced(expr), f"{where}: unbalanced brackets in {expr!r}"
        for matcher in re.findall(r"\{([^}]*)\}", expr):
            used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matcher))
            assert used <= LABELS, f"{where}: unknown label {used - LABELS} in {expr!r}"
        for grouping in re.findall(r"\bby \(([^)]*)\)", expr):
            used = {label.strip() for label in grouping.split(",")}
            assert used <= LABELS, f"{where}: unknown label {used - LABELS} in {expr!r}"
        if where not in ("project", "service", "endpoint"):
            # every panel follows the project/service/endpoint selection
            assert expr.count("maas_") == expr.count(FILTER), f"{where}: a selector without the filter: {expr!r}"
        if "_bucket" in expr:
            assert "histogram_quantile(" in expr and "le" in expr, f"{where}: {expr!r}"
    every_family = {s for s in SERIES if not s.endswith(("_sum", "_count"))}
    assert {s for s in seen if not s.endswith(("_sum", "_count"))} == every_family  # each metric is shown


def test_the_exporter_exports_these_metrics():
    """The exporter's registry holds exactly the families the dashboard draws."""
    from cluster.accounting import metrics

    families = {family.name: family.type for family in metrics.UsageMetrics().registry.collect()}
    assert families == {**{c: "counter" for c in COUNTERS}, **{h: "histogram" for h in HISTOGRAMS},
                        **{g: "gauge" for g in GAUGES}}
