"""The README's metric reference table is exact: every name in it is in a
real scrape with the type and labels it says, and every family of the scrape
is in it (README "Observability and the fleet"); the scrape, with a
watched cgroup, passes `promtool check metrics`."""
from __future__ import annotations

import fnmatch
import os
import re
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scrape_names import real_scrape_text

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def readme_table() -> list[dict]:
    """Rows of the table under "Metric reference": names (backticked, a
    `{label}` suffix dropped, `*` a wildcard), type and labels ('' = not stated)."""
    text = open(README, encoding="utf-8").read()
    sec = text[text.index("## Observability and the fleet"):]
    sec = sec[:sec.index("\n## ", 1)]
    sec = sec[sec.index("Metric reference"):]
    rows = []
    for line in sec.splitlines():
        if not line.startswith("| `aal_core_"):
            if rows and not line.startswith("|"):
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = [re.sub(r"\{.*\}", "", n) for n in re.findall(r"`([^`]+)`", cells[0])]
        labels = None if cells[2] in ("",) else set(re.findall(r"`([^`]+)`", cells[2]))
        rows.append({"names": names, "type": cells[1], "labels": labels})
    return rows


def scrape_families(text: str) -> dict:
    """name as exposed (a counter with _total) -> (type, label names; None
    for a family declared without samples)."""
    out = {}
    for f in text_string_to_metric_families(text):
        name = f.name + "_total" if f.type == "counter" else f.name
        labels = {k for s in f.samples for k in s.labels if k != "le"} if f.samples else None
        out[name] = (f.type, labels)
    return out


@pytest.fixture(scope="module")
def text():
    return real_scrape_text(cgroup=True)


@pytest.fixture(scope="module")
def scraped(text):
    return scrape_families(text)


def test_promtool_check_metrics_passes_with_a_watched_cgroup(text):
    """The families only a watched cgroup brings (its usage, limit and PSI) lint clean too."""
    assert "aal_core_cgroup_pressure_memory_some_ratio{" in text
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def test_table_parses():
    rows = readme_table()
    assert len(rows) > 90
    assert {"names": ["aal_core_ram_stress"], "type": "gauge", "labels": set()} in rows


def test_every_name_in_the_table_is_in_a_real_scrape_as_documented(scraped):
    wrong = []
    for row in readme_table():
        for pat in row["names"]:
            hits = fnmatch.filter(scraped, pat)
            if not hits:
                wrong.append(f"{pat}: not in the scrape")
                continue
            for h in hits:
                typ, labels = scraped[h]
                if row["type"] and typ != row["type"]:
                    wrong.append(f"{h}: the table says {row['type']}, the scrape {typ}")
                if row["labels"] is not None and labels is not None and labels != row["labels"]:
                    wrong.append(f"{h}: the table says labels {sorted(row['labels'])}, the scrape {sorted(labels)}")
    assert not wrong, "\n".join(wrong)


def test_every_family_of_the_scrape_is_in_the_table(scraped):
    pats = [p for row in readme_table() for p in row["names"]]
    missing = sorted(n for n in scraped if not any(fnmatch.fnmatchcase(n, p) for p in pats))
    assert not missing, f"in the scrape, not in the README table: {missing}"
