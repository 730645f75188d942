"""Metric families in the daemon's one format, and the counters that feed them.

A unit's `metrics()` returns a list of families built from its state when
called (system.metrics, at scrape time), never on a hot path:

    {"name": "aal_core_<...>", "type": "counter"|"gauge"|"histogram",
     "help": "...", "samples": [{"labels": {"k": "v"}, "value": 3.0}]}

A histogram sample's value is {"buckets": [[le, cumulative count], ...,
["+Inf", count]], "sum": s, "count": count}.  `Histogram.observe` is what a
hot path pays: one bisect, one list increment, two additions.

Pure: no I/O.  The exporter (aal_core.export) turns these dicts into
prometheus_client families generically; `check_family` is the contract both
sides agree on.
"""
from __future__ import annotations

import math
import re
from bisect import bisect_left

__all__ = ["Histogram", "LATENCY_BUCKETS", "SIZE_BUCKETS", "family", "sample", "check_family",
           "TYPES", "NAME_RE"]

# Seconds: from half a millisecond (an RPC answered from memory) to 10 s
# (a full ledger verify on the board).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Counts (group-commit batch sizes): powers of two up to ledger.max_batch's default.
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

TYPES = ("counter", "gauge", "histogram")
NAME_RE = re.compile(r"aal_core_[a-zA-Z0-9_]*\Z")
LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
# Label names Prometheus or the exposition reserve.
RESERVED_LABELS = frozenset({"le", "quantile"})
# A family with more series than this is refused: labels must be bounded.
MAX_SAMPLES = 2000


class Histogram:
    """Cumulative-on-read histogram: observe() only bumps one bucket."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds=LATENCY_BUCKETS):
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)   # last: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, i.e. the bucket "le" it falls in.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def value(self) -> dict:
        buckets = []
        running = 0
        for b, c in zip(self.bounds, self.counts):
            running += c
            buckets.append([b, running])
        buckets.append(["+Inf", self.count])
        return {"buckets": buckets, "sum": self.sum, "count": self.count}


def sample(value, labels: dict | None = None) -> dict:
    return {"labels": dict(labels) if labels else {}, "value": value}


def family(name: str, type_: str, help_: str, samples) -> dict:
    """One family; `samples` is a list of sample() dicts, or a bare number
    (or histogram) for a family without labels."""
    if not isinstance(samples, list):
        samples = [sample(samples)]
    return {"name": name, "type": type_, "help": help_, "samples": samples}


def check_family(f) -> str | None:
    """None if `f` is a well-formed family, else why not (one line)."""
    if not isinstance(f, dict):
        return f"a family must be an object, got {type(f).__name__}"
    name = f.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        return f"bad metric name {name!r} (must match aal_core_[a-zA-Z0-9_]*)"
    t = f.get("type")
    if t not in TYPES:
        return f"{name}: type must be one of {', '.join(TYPES)}, got {t!r}"
    if t == "counter" and not name.endswith("_total"):
        return f"{name}: a counter's name ends in _total"
    if not isinstance(f.get("help", ""), str):
        return f"{name}: help must be a string"
    samples = f.get("samples")
    if not isinstance(samples, list):
        return f"{name}: samples must be a list"
    if len(samples) > MAX_SAMPLES:
        return f"{name}: {len(samples)} samples, more than {MAX_SAMPLES} (unbounded labels?)"
    keys = None
    seen = set()
    for s in samples:
        if not isinstance(s, dict):
            return f"{name}: a sample must be an object"
        labels = s.get("labels", {})
        if not isinstance(labels, dict):
            return f"{name}: labels must be an object"
        for k, v in labels.items():
            if not isinstance(k, str) or not LABEL_RE.match(k) or k.startswith("__") or k in RESERVED_LABELS:
                return f"{name}: bad label name {k!r}"
            if not isinstance(v, str):
                return f"{name}: label {k} must be a string, got {type(v).__name__}"
        ks = tuple(sorted(labels))
        if keys is None:
            keys = ks
        elif ks != keys:
            return f"{name}: every sample needs the same label names ({', '.join(keys) or 'none'})"
        ident = tuple(labels[k] for k in ks)
        if ident in seen:
            return f"{name}: two samples with the same labels {labels}"
        seen.add(ident)
        v = s.get("value")
        if t == "histogram":
            why = _check_histogram(v)
            if why:
                return f"{name}: {why}"
        elif type(v) not in (int, float) or type(v) is bool:
            return f"{name}: value must be a number, got {type(v).__name__}"
    return None


def _check_histogram(v) -> str | None:
    if not isinstance(v, dict) or not isinstance(v.get("buckets"), list):
        return "a histogram value is {buckets, sum, count}"
    if type(v.get("sum")) not in (int, float) or type(v.get("count")) is not int:
        return "a histogram needs a numeric sum and an integer count"
    b = v["buckets"]
    if not b or b[-1][0] != "+Inf" or b[-1][1] != v["count"]:
        return "the last bucket is [\"+Inf\", count]"
    prev_le, prev_c = -math.inf, 0
    for pair in b[:-1]:
        if not isinstance(pair, list) or len(pair) != 2 or type(pair[0]) not in (int, float) \
                or type(pair[1]) is not int:
            return "a bucket is [upper bound, cumulative count]"
        if pair[0] <= prev_le or pair[1] < prev_c:
            return "buckets must be increasing in bound and cumulative in count"
        prev_le, prev_c = pair[0], pair[1]
    if v["count"] < prev_c:
        return "the +Inf bucket holds every observation"
    return None
