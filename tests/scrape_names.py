"""Metric names of a real scrape and of PromQL expressions, for the rules
and dashboard tests."""
from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from export_helpers import free_port, start_exporter
from helpers import cleanup, short_tmpdir, start_daemon

# PromQL words that look like identifiers but are not metric names.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
            "offset", "inf", "nan", "le"}
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def real_scrape_names() -> set[str]:
    """Family and sample names (with _bucket, _sum, _count, _total) of one
    scrape of `aal-core export` beside a daemon with the bundled tegrastats
    replay, fleet publishing configured (to a Redis that is not there)."""
    d = start_daemon(base=short_tmpdir(), tegrastats="replay")
    ex = None
    try:
        import time
        time.sleep(2.5)       # a tegrastats line and a few samples
        ex = start_exporter(d, f'[fleet]\nredis_url = "redis://127.0.0.1:{free_port()}/0"\n')
        text = ex.metrics_text()
    finally:
        if ex is not None:
            ex.stop()
        cleanup(d)
    fams = list(text_string_to_metric_families(text))
    return {f.name for f in fams} | {s.name for f in fams for s in f.samples}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers that are neither
    functions (followed by '('), keywords, label names inside {...} or
    by/without (...), nor inside strings or [ranges]."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    out = set()
    for m in _IDENT.finditer(e):
        name = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or name.lower() in KEYWORDS:
            continue
        if re.fullmatch(r"[0-9.e]+", name):
            continue
        out.add(name)
    return out
