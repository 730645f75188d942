"""The metric family format (daemon/metrics.py): the histogram, the checks
every family passes, the sensing families, the RPC counters, and the
exporter's generic conversion to prometheus_client."""
from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aal_core.export.families import convert, to_prometheus
from aal_core.metrics import Histogram, check_family, family, sample
from aal_core.rpc.protocol import Call, Dispatcher
from aal_core.rpc.registry import Access, Registry
from aal_core.stress import metrics as sm
from aal_core.stress.sample import StressSample


def test_histogram_buckets_are_cumulative_with_le_semantics():
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0, 1.0):
        h.observe(v)
    v = h.value()
    # le: observations <= bound, so 0.1 lands in the 0.1 bucket and 1.0 in the 1.0 bucket.
    assert v["buckets"] == [[0.1, 2], [1.0, 4], ["+Inf", 5]]
    assert v["count"] == 5 and v["sum"] == pytest.approx(3.65)
    assert check_family(family("aal_core_x_seconds", "histogram", "", v)) is None


@pytest.mark.parametrize("bad, why", [
    ({"name": "node_x", "type": "gauge", "samples": []}, "bad metric name"),
    ({"name": "aal_core_x", "type": "summary", "samples": []}, "type must be"),
    ({"name": "aal_core_x", "type": "counter", "samples": []}, "ends in _total"),
    ({"name": "aal_core_x", "type": "gauge", "samples": [{"labels": {}, "value": "1"}]}, "must be a number"),
    ({"name": "aal_core_x", "type": "gauge", "samples": [{"labels": {"le": "1"}, "value": 1}]}, "bad label name"),
    ({"name": "aal_core_x", "type": "gauge", "samples": [{"labels": {"a": 1}, "value": 1}]}, "must be a string"),
    ({"name": "aal_core_x", "type": "gauge",
      "samples": [{"labels": {"a": "1"}, "value": 1}, {"labels": {"b": "1"}, "value": 1}]}, "same label names"),
    ({"name": "aal_core_x", "type": "gauge",
      "samples": [{"labels": {"a": "1"}, "value": 1}, {"labels": {"a": "1"}, "value": 2}]}, "same labels"),
    ({"name": "aal_core_x", "type": "gauge", "samples": [{"labels": {"a": str(i)}, "value": 1} for i in range(2001)]},
     "unbounded"),
    ({"name": "aal_core_x", "type": "histogram",
      "samples": [{"labels": {}, "value": {"buckets": [[1, 2], ["+Inf", 1]], "sum": 1, "count": 1}}]}, "+Inf"),
    ({"name": "aal_core_x", "type": "histogram",
      "samples": [{"labels": {}, "value": {"buckets": [[1, 2], [0.5, 3], ["+Inf", 3]], "sum": 1, "count": 3}}]},
     "increasing"),
    ("not a dict", "must be an object"),
])
def test_malformed_families_are_named(bad, why):
    assert why in check_family(bad)


def test_stress_families_carry_the_sample_and_the_band_as_a_state_set():
    s = StressSample(stress=0.8, band="CRITICAL", model="fused", components={"used": 0.7, "psi": 0.1},
                     seconds_to_exhaustion=7.5, thermal_margin_c=3.0, power_mw=4500.0, seq=12)
    fams = {f["name"]: f for f in sm.stress_families(s)}
    assert fams["aal_core_ram_stress"]["samples"][0]["value"] == 0.8
    bands = {x["labels"]["band"]: x["value"] for x in fams["aal_core_stress_band"]["samples"]}
    assert bands == {"LOW": 0.0, "MODERATE": 0.0, "HIGH": 0.0, "CRITICAL": 1.0}
    assert fams["aal_core_time_to_exhaustion_seconds"]["samples"][0]["value"] == 7.5
    assert fams["aal_core_board_power_watts"]["samples"][0]["value"] == 4.5
    assert all(check_family(f) is None for f in fams.values())
    # Memory not growing: no time to exhaustion at all (absent, not a fake number).
    calm = {f["name"]: f for f in sm.stress_families(StressSample(stress=0.1, band="LOW", model="fused"))}
    assert calm["aal_core_time_to_exhaustion_seconds"]["samples"] == []


def test_tegrastats_labels_are_bounded_and_checked():
    temps = {f"zone{i}": 40.0 + i for i in range(40)}
    temps["bad name with spaces"] = 99.0
    rails = {f"VDD_{i}": {"current": 1000 * i} for i in range(30)}
    t = {"ram": {"used_mb": 100, "total_mb": 200, "lfb_blocks": 3, "lfb_block_kb": 4096},
         "swap": {"used_mb": 1, "total_mb": 2}, "emc": {"util_pct": 50, "freq_mhz": 2133},
         "gpu": {"util_pct": 99}, "temps_c": temps, "power_mw": rails}
    fams = {f["name"]: f for f in sm.tegrastats_families(t, "live")}
    temp = fams["aal_core_tegrastats_temperature_celsius"]["samples"]
    assert len(temp) == sm.MAX_LABELS and all(" " not in x["labels"]["sensor"] for x in temp)
    assert len(fams["aal_core_tegrastats_power_watts"]["samples"]) == sm.MAX_LABELS
    assert fams["aal_core_tegrastats_emc_utilization_ratio"]["samples"][0]["value"] == 0.5
    assert fams["aal_core_tegrastats_lfb_bytes"]["samples"][0]["value"] == 3 * 4096 * 1024
    assert fams["aal_core_tegrastats_replay"]["samples"][0]["value"] == 0.0
    assert all(check_family(f) is None for f in fams.values())


def test_dispatcher_counts_requests_by_method_and_outcome():
    reg = Registry()
    reg.add("system.health", lambda p, c: {"ok": True, "uptime_s": 0.0}, result="HealthResult")
    reg.add("system.reload", lambda p, c: {"reloaded": True, "changed": [], "restart_required": []},
            result="ReloadResult", access=Access.ADMIN)

    async def boom(p, c):
        raise RuntimeError("x")
    reg.add("system.status", boom, result="SystemStatus")
    d = Dispatcher(reg)
    reader = Call(access=Access.READ)
    for _ in range(3):
        d.handle_frame(b'{"jsonrpc":"2.0","id":1,"method":"system.health"}', reader)
    d.handle_frame(b'{"jsonrpc":"2.0","id":1,"method":"system.reload"}', reader)
    d.handle_frame(b'{"jsonrpc":"2.0","id":1,"method":"no.such"}', reader)
    asyncio.run(d.handle_frame(b'{"jsonrpc":"2.0","id":1,"method":"system.status"}', reader))
    fams = {f["name"]: f for f in d.metrics()}
    got = {(s["labels"]["method"], s["labels"]["outcome"]): s["value"]
           for s in fams["aal_core_rpc_requests_total"]["samples"]}
    assert got[("system.health", "ok")] == 3
    assert got[("system.reload", "denied")] == 1
    assert got[("system.status", "error")] == 1
    assert fams["aal_core_rpc_unknown_method_requests_total"]["samples"][0]["value"] == 1
    lat = {s["labels"]["method"]: s["value"]["count"] for s in fams["aal_core_rpc_request_duration_seconds"]["samples"]}
    assert lat == {"system.health": 3, "system.reload": 0, "system.status": 1}
    assert all(check_family(f) is None for f in fams.values())


def _expose(fams) -> dict:
    class C:
        def collect(self):
            return convert(fams)[0]
    reg = CollectorRegistry()
    reg.register(C())
    text = generate_latest(reg).decode()
    return {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}


def test_any_units_families_convert_generically():
    """A family the exporter has never heard of (another unit's, say an
    overlay's) converts with its type, labels and histogram intact."""
    h = Histogram((0.5,))
    h.observe(0.1)
    h.observe(2.0)
    fams = [family("aal_core_overlay_runs_total", "counter", "runs", [sample(4, {"overlay": "a"})]),
            family("aal_core_overlay_phase_seconds", "histogram", "phase", [sample(h.value(), {"phase": "x"})]),
            family("aal_core_overlay_up", "gauge", "", 1.0)]
    got = _expose(fams)
    assert got["aal_core_overlay_runs_total"].value == 4 and got["aal_core_overlay_runs_total"].labels == {"overlay": "a"}
    assert got["aal_core_overlay_phase_seconds_count"].value == 2
    assert got["aal_core_overlay_phase_seconds_sum"].value == pytest.approx(2.1)
    assert got["aal_core_overlay_up"].value == 1


def test_a_malformed_family_is_skipped_not_half_exposed():
    good = family("aal_core_a", "gauge", "", 1.0)
    bad = {"name": "aal_core_b", "type": "gauge", "samples": [{"labels": {}, "value": "NaN?"}]}
    metrics, skipped = convert([good, bad])
    assert [m.name for m in metrics] == ["aal_core_a"] and "must be a number" in skipped[0]
    with pytest.raises(ValueError, match="bad metric name"):
        to_prometheus({"name": "x", "type": "gauge", "samples": []})
