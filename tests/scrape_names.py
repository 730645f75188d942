"""Metric names of a real scrape and of PromQL expressions, for the rules
and dashboard tests."""
from __future__ import annotations

import os
import re

from prometheus_client.parser import text_string_to_metric_families

from export_helpers import free_port, start_exporter
from helpers import cleanup, short_tmpdir, start_daemon

# PromQL words that look like identifiers but are not metric names.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
            "offset", "inf", "nan", "le"}
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def write_v2_cgroup(path) -> str:
    """A cgroup v2 memory directory with every file the cgroup source reads
    (this host has v1 only, where no such directory can exist): 100 MiB of a
    4 GiB limit, its own PSI."""
    os.makedirs(path, exist_ok=True)
    files = {"memory.max": f"{4 << 30}\n", "memory.current": f"{100 << 20}\n",
             "memory.stat": "anon 1\nfile 0\nactive_file 0\ninactive_file 1048576\n",
             "memory.events": "oom 0\noom_kill 0\n",
             "memory.pressure": "some avg10=0.10 avg60=0.05 avg300=0.01 total=1234\n"
                                "full avg10=0.00 avg60=0.00 avg300=0.00 total=56\n"}
    for name, text in files.items():
        with open(os.path.join(path, name), "w") as fh:
            fh.write(text)
    return path


def real_scrape_text(cgroup: bool = False) -> str:
    """One scrape of `aal-core export` beside a daemon with the bundled
    tegrastats replay, fleet publishing configured (to a Redis that is not
    there), and with `cgroup` a watched cgroup."""
    base = short_tmpdir()
    args = ("--cgroup", write_v2_cgroup(os.path.join(base, "cg"))) if cgroup else ()
    d = start_daemon(*args, base=base, tegrastats="replay")
    ex = None
    try:
        import time
        time.sleep(2.5)       # a tegrastats line and a few samples
        ex = start_exporter(d, f'[fleet]\nredis_url = "redis://127.0.0.1:{free_port()}/0"\n')
        return ex.metrics_text()
    finally:
        if ex is not None:
            ex.stop()
        cleanup(d)


def real_scrape_names() -> set[str]:
    """Family and sample names (with _bucket, _sum, _count, _total) of real_scrape_text()."""
    fams = list(text_string_to_metric_families(real_scrape_text()))
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
