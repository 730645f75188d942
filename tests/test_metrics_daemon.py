"""system.metrics and ledger.head on a real daemon."""
from __future__ import annotations

import os
import shutil
import struct
import sys

import pytest

from aal_core.client import Client, RpcCallError
from aal_core.keys import verify
from aal_core.ledger.head import DOMAIN, signed_bytes, verify_head
from aal_core.metrics import check_family
from helpers import short_tmpdir, wait_for

MEMINFO = ("MemTotal:        8000000 kB\nMemFree:         2000000 kB\nMemAvailable:    2000000 kB\n"
           "Buffers:                 0 kB\nCached:                  0 kB\nSwapTotal:               0 kB\n"
           "SwapFree:                0 kB\nShmem:                   0 kB\n")


def static_proc(base: str) -> str:
    """A proc root whose meminfo never changes: the stress holds still, so
    two readings at different times agree exactly."""
    root = os.path.join(base, "proc")
    os.makedirs(root)
    with open(os.path.join(root, "meminfo"), "w") as fh:
        fh.write(MEMINFO)
    shutil.copy("/proc/vmstat", os.path.join(root, "vmstat"))
    return root


@pytest.fixture
def steady(daemon_factory):
    base = short_tmpdir()
    return daemon_factory("--proc-root", static_proc(base), base=base, tegrastats="replay")


def families(d) -> dict:
    snap = d.call("system.metrics")
    assert "errors" not in snap, snap.get("errors")
    return {f["name"]: f for f in snap["families"]}


def value(fams, name, **labels):
    for s in fams[name]["samples"]:
        if all(s["labels"].get(k) == v for k, v in labels.items()):
            return s["value"]
    raise KeyError(f"{name}{labels}")


def test_snapshot_has_every_capability_and_ram_stress_is_stress_get(steady):
    def tegra_line():
        try:
            return steady.call("tegrastats.latest")
        except RpcCallError:
            return None
    wait_for(tegra_line, what="a tegrastats line")
    fams = families(steady)
    for name in ("aal_core_ram_stress", "aal_core_stress_band", "aal_core_stress_component",
                 "aal_core_memory_available_bytes", "aal_core_source_up", "aal_core_tegrastats_temperature_celsius",
                 "aal_core_tegrastats_power_watts", "aal_core_tegrastats_gpu_utilization_ratio",
                 "aal_core_jobs", "aal_core_directives_issued_total", "aal_core_directive_ack_latency_seconds",
                 "aal_core_degradation_level", "aal_core_ledger_entries", "aal_core_ledger_append_latency_seconds",
                 "aal_core_ledger_group_commit_batch_size", "aal_core_venom_beats_total",
                 "aal_core_venom_decisions_total", "aal_core_rpc_requests_total",
                 "aal_core_rpc_request_duration_seconds", "aal_core_rpc_connections",
                 "aal_core_rpc_notifications_dropped_total", "aal_core_process_resident_memory_bytes",
                 "aal_core_process_cpu_seconds_total", "aal_core_build_info", "aal_core_oom_kills_total"):
        assert name in fams, name
    assert all(check_family(f) is None for f in fams.values())
    assert value(fams, "aal_core_ram_stress") == steady.call("stress.get")["stress"]
    band = steady.call("stress.get")["band"]
    assert value(fams, "aal_core_stress_band", band=band) == 1.0
    assert sum(s["value"] for s in fams["aal_core_stress_band"]["samples"]) == 1.0
    assert value(fams, "aal_core_memory_total_bytes") == 8000000 * 1024
    assert value(fams, "aal_core_tegrastats_replay") == 1.0


def test_counters_follow_what_the_daemon_did(steady):
    before = families(steady)
    with Client(steady.socket) as c:
        for i in range(3):
            c.call("ledger.append", {"data": {"type": "test.metrics", "i": i}})
    after = families(steady)
    assert value(after, "aal_core_ledger_entries") == value(before, "aal_core_ledger_entries") + 3
    assert value(after, "aal_core_ledger_appends_total") == value(before, "aal_core_ledger_appends_total") + 3
    lat = value(after, "aal_core_ledger_append_latency_seconds")
    assert lat["count"] == value(before, "aal_core_ledger_append_latency_seconds")["count"] + 3
    assert value(after, "aal_core_rpc_requests_total", method="ledger.append", outcome="ok") >= 3
    assert value(after, "aal_core_rpc_request_duration_seconds", method="ledger.append")["count"] >= 3
    assert value(after, "aal_core_stress_samples_total") > value(before, "aal_core_stress_samples_total") - 1


def test_ledger_head_is_signed_by_the_daemon_key_over_the_documented_bytes(steady):
    steady.call("ledger.append", {"data": {"type": "test.head"}})
    head = steady.call("ledger.head")
    man = steady.call("ledger.manifest")
    assert head["size"] == man["chain_length"] and head["root"] == man["merkle_root"]
    assert head["public_key"] == steady.call("system.public_key")["public_key"]
    assert head["algorithm"] == "ed25519"
    # The exact bytes: domain, u64 BE size, 32-byte root, u64 BE milliseconds.
    data = DOMAIN + struct.pack(">Q", head["size"]) + bytes.fromhex(head["root"]) + struct.pack(">Q", head["timestamp"])
    assert len(data) == 70 and data == signed_bytes(head["size"], bytes.fromhex(head["root"]), head["timestamp"])
    assert verify(head["public_key"], head["signature"], data)
    assert verify_head(head)
    # Any change to what is signed breaks it.
    for k, v in (("size", head["size"] + 1), ("timestamp", head["timestamp"] + 1), ("root", "00" * 32)):
        assert not verify_head({**head, k: v}), k
    assert not verify_head({**head, "signature": "00" * 64})
    assert not verify_head({k: v for k, v in head.items() if k != "root"})
    assert not verify_head({**head, "root": "zz"})


def test_ledger_head_after_rotation_is_signed_by_the_new_key(steady):
    old = steady.call("ledger.head")
    steady.call("system.rotate_key")
    new = steady.call("ledger.head")
    assert new["public_key"] != old["public_key"] and verify_head(new)
    assert not verify_head(new, public_key=old["public_key"])


def test_a_unit_whose_metrics_fail_loses_only_its_families():
    """In process: a broken metrics() (raises) and a malformed family are
    dropped, counted and named; the rest of the snapshot stands."""
    import asyncio

    from aal_core import app, config, system
    from aal_core.units import Unit

    class Broken(Unit):
        name = "broken"

        def metrics(self):
            raise RuntimeError("boom")

    class Malformed(Unit):
        name = "malformed"

        def metrics(self):
            return [{"name": "aal_core_bad", "type": "counter", "samples": []}]

    class Clashing(Unit):
        name = "clashing"

        def metrics(self):
            # OpenMetrics calls this counter's family aal_core_jobs: the governor's gauge.
            return [{"name": "aal_core_jobs_total", "type": "counter", "help": "",
                     "samples": [{"labels": {}, "value": 1.0}]}]

    async def go():
        base = short_tmpdir()
        try:
            cfg = config.local_defaults(base)
            rt = app.Runtime(cfg, None, {})
            rt.units += [Broken(rt.ctx), Malformed(rt.ctx), Clashing(rt.ctx)]
            snap = system.snapshot(rt)
            names = {f["name"] for f in snap["families"]}
            assert "aal_core_build_info" in names and "aal_core_jobs" in names
            assert "aal_core_bad" not in names and "aal_core_jobs_total" not in names
            units = sorted(e["unit"] for e in snap["errors"])
            assert units == ["-", "broken", "malformed"]
            assert any("clashes" in e["reason"] for e in snap["errors"])
            assert any("boom" in e["reason"] for e in snap["errors"])
            errs = [f for f in snap["families"] if f["name"] == "aal_core_metrics_errors_total"][0]
            assert errs["samples"][0]["value"] == 3
        finally:
            shutil.rmtree(base, ignore_errors=True)
    asyncio.run(go())


def test_the_daemon_never_imports_prometheus_client_or_redis(tmp_path):
    """`aal-core run`'s imports (the CLI, every unit, system.metrics) leave
    prometheus_client and redis out: only `aal-core export` loads them."""
    import subprocess
    code = ("import sys, asyncio\n"
            "from aal_core import __main__ as m, app, config, system\n"
            "try:\n    m.main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
            "async def go():\n"
            f"    rt = app.Runtime(config.local_defaults({str(tmp_path)!r}), None, {{}})\n"
            "    system.snapshot(rt)\n"
            "asyncio.run(go())\n"
            "print('loaded:' + ','.join(x for x in sys.modules if x.split('.')[0] in ('prometheus_client', 'redis')))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "loaded:", r.stdout
