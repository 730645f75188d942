"""TOOLS/prometheus/aal-core.rules.yml: promtool check rules, promtool test
rules (the unit tests beside it), and every metric the rules read exists
in a real scrape (or is recorded by the rules themselves)."""
from __future__ import annotations

import os
import subprocess

import pytest

from scrape_names import metric_names, real_scrape_names

RULES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "TOOLS", "prometheus")
RULES = os.path.join(RULES_DIR, "aal-core.rules.yml")
TESTS = os.path.join(RULES_DIR, "aal-core.rules.tests.yml")


def rule_exprs(path: str) -> tuple[list[str], set[str]]:
    """(every expr, every recorded name) of a rules file, read line by line
    (the file keeps to `expr: ...` on one line or `expr: |` blocks)."""
    exprs, records = [], set()
    lines = open(path).read().splitlines()
    i = 0
    while i < len(lines):
        s = lines[i].strip()
        if s.startswith("- record:"):
            records.add(s.split(":", 1)[1].strip())
        if s.startswith("expr:"):
            v = s.split(":", 1)[1].strip()
            if v == "|":
                indent = len(lines[i]) - len(lines[i].lstrip())
                block = []
                while i + 1 < len(lines) and (not lines[i + 1].strip()
                                              or len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent):
                    i += 1
                    block.append(lines[i].strip())
                v = " ".join(block)
            exprs.append(v)
        i += 1
    return exprs, records


def test_promtool_check_rules():
    r = subprocess.run(["promtool", "check", "rules", RULES], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_promtool_test_rules():
    r = subprocess.run(["promtool", "test", "rules", os.path.basename(TESTS)], cwd=RULES_DIR,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_promtool_test_rules_fails_on_a_wrong_expectation(tmp_path):
    """The unit tests can fail: the same file expecting no alert where one fires."""
    text = open(TESTS).read().replace("rule_files:\n  - aal-core.rules.yml", f"rule_files:\n  - {RULES}")
    wrong = text.replace("""      - eval_time: 90s
        alertname: AalCoreStressCritical
        exp_alerts:""", """      - eval_time: 90s
        alertname: AalCoreStressCritical
        exp_alerts: []
        unused:""", 1)
    assert wrong != text
    p = tmp_path / "wrong.yml"
    p.write_text(wrong)
    r = subprocess.run(["promtool", "test", "rules", str(p)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0


def test_the_alerts_the_issue_names_exist():
    text = open(RULES).read()
    for alert in ("AalCoreStressCritical", "AalCoreExhaustionImminent", "AalCoreDirectivesOverdue", "AalCoreOomKill",
                  "AalCoreLedgerVerifyFailed", "AalCoreSourceDown", "AalCoreExporterDown", "AalCoreDaemonDown",
                  "AalCoreThermalMarginLow", "AalCoreCriticalBudgetFastBurn", "AalCoreAckLatencyBudgetFastBurn"):
        assert f"alert: {alert}\n" in text, alert


@pytest.mark.slow
def test_every_metric_the_rules_read_is_in_a_real_scrape():
    exprs, records = rule_exprs(RULES)
    assert len(exprs) >= 20
    used = set().union(*(metric_names(e) for e in exprs))
    scraped = real_scrape_names() | {"up"}          # `up` is Prometheus' own
    missing = sorted(n for n in used - records if n not in scraped)
    assert not missing, f"rules read metrics the exposition lacks: {missing}"
    assert "aal_core_ram_stress" in scraped and "aal_core_directive_ack_latency_seconds_bucket" in used
