"""Metric families in the daemon's format (daemon/metrics.py) as prometheus_client families.

Generic: any unit's families convert, new ones included, with no table of
names here.  A family that does not pass metrics.check_family is skipped and
counted, never half-exposed.
"""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..metrics import check_family


def _le(b) -> str:
    if b == "+Inf":
        return "+Inf"
    return repr(float(b))


def to_prometheus(fam: dict):
    """One family dict -> a prometheus_client Metric (raises ValueError if malformed)."""
    why = check_family(fam)
    if why is not None:
        raise ValueError(why)
    name, help_, samples = fam["name"], fam.get("help", "") or fam["name"], fam["samples"]
    labels = sorted(samples[0]["labels"]) if samples else []
    t = fam["type"]
    if t == "counter":
        # prometheus_client adds _total itself.
        m = CounterMetricFamily(name[:-len("_total")], help_, labels=labels)
        for s in samples:
            m.add_metric([s["labels"][k] for k in labels], float(s["value"]))
    elif t == "gauge":
        m = GaugeMetricFamily(name, help_, labels=labels)
        for s in samples:
            m.add_metric([s["labels"][k] for k in labels], float(s["value"]))
    else:
        m = HistogramMetricFamily(name, help_, labels=labels)
        for s in samples:
            v = s["value"]
            m.add_metric([s["labels"][k] for k in labels], [(_le(b), float(c)) for b, c in v["buckets"]],
                         float(v["sum"]))
    return m


def convert(families: list) -> tuple[list, list[str]]:
    """-> (prometheus_client metrics, reasons of the families skipped)."""
    out, skipped = [], []
    for f in families:
        try:
            out.append(to_prometheus(f))
        except (ValueError, KeyError, TypeError) as exc:
            skipped.append(str(exc))
    return out, skipped
