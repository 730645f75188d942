"""TOOLS/grafana/aal-core.json: valid, and every metric name in every
expression (panels, annotations, template variables) is in a real scrape."""
from __future__ import annotations

import json
import os
import re

import pytest

from scrape_names import metric_names, real_scrape_names
from test_export_rules import RULES, rule_exprs

DASH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "TOOLS", "grafana", "aal-core.json")


def expressions(d: dict) -> list[str]:
    out = []
    for p in d["panels"]:
        out += [t["expr"] for t in p.get("targets", [])]
    out += [a["expr"] for a in d.get("annotations", {}).get("list", []) if "expr" in a]
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((\w+),\s*\w+\)", q or "")
        if m:
            out.append(m.group(1))
    return out


def test_dashboard_shape():
    d = json.load(open(DASH))
    assert d["uid"] == "aal-core" and d["panels"]
    titles = [p["title"] for p in d["panels"]]
    for want in ("RAM stress", "Band", "Stress components", "Time to exhaustion", "Jobs by state",
                 "Degradation level", "tegrastats temperatures", "Ledger entries", "RPC requests / s"):
        assert want in titles, want
    assert any("directives_issued" in a["expr"] for a in d["annotations"]["list"])
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))


def test_metric_names_parse_as_expected():
    assert metric_names('histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{x="y"}[5m])))') == {"a_bucket"}
    assert metric_names("aal_core_x == 1 and on (instance) b > 14.4 * 0.01") == {"aal_core_x", "b"}


@pytest.mark.slow
def test_every_expression_reads_only_metrics_the_exposition_has():
    d = json.load(open(DASH))
    exprs = expressions(d)
    assert len(exprs) >= 40
    used = set().union(*(metric_names(e) for e in exprs))
    _, records = rule_exprs(RULES)
    scraped = real_scrape_names()
    missing = sorted(n for n in used if n not in scraped and n not in records)
    assert not missing, f"the dashboard reads metrics the exposition lacks: {missing}"
    assert len(used) >= 30
