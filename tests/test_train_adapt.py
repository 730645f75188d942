"""Issue 11's second round against a real daemon: HardwareContext from sensing
(replayed tegrastats, no GPU), train.telemetry, optimizer_adjustment from a
cut_batch rung (and its undo), the circuit breaker (non-finite loss, stress
while paused), each applied by the real client on a real torch loop."""
import math
import os

import pytest
from google.protobuf import json_format

from aal_core import errors as E
from aal_core.client import RpcCallError
from aal_core.client.train import CircuitOpen, CommandChannel, GovernedTraining
from aal_core.tegrastats import parse_tegrastats
from aal_core.v1 import train_pb2

try:
    import torch
except ImportError:
    torch = None

from helpers import cleanup, start_daemon, wait_for
from train_helpers import ledger_data

KNOBS = {"micro_batch_size": 64, "grad_accum_steps": 1}
RECORDING = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "daemon", "data",
                         "tegrastats-orin-jp6.txt")
# No rung within reach of a real host's stress: only the breaker acts.
QUIET = "[train]\nhalve_at = 0.97\nbatch_halvings = 1\ncheckpointing_at = 0.98\npause_at = 0.99\nresume_below = 0.5\n"


def _state(run="r1", **kw):
    return {"training_run_id": run, "knobs": dict(KNOBS), **kw}


def _msg(cls, d):
    """d parsed strictly as the proto message cls (the API is its JSON mapping)."""
    return json_format.ParseDict(d, cls(), ignore_unknown_fields=False)


def _recorded():
    """(ram used, ram total, GR3D %, temps) of every line of the bundled recording."""
    out = []
    with open(RECORDING, "rb") as fh:
        for ln in fh:
            if ln.strip() and not ln.startswith(b"#"):
                p = parse_tegrastats(ln.rstrip(b"\n"))
                out.append((p["ram"]["used_mb"] << 20, p["ram"]["total_mb"] << 20,
                            float(p["gpu"]["util_pct"]), {k: float(v) for k, v in p["temps_c"].items()}))
    return out


# ------------------------------------------------------------ HardwareContext

def test_hardware_context_carries_the_replayed_tegrastats_figures():
    d = start_daemon(config=QUIET, tegrastats="replay")
    try:
        with d.client() as c:
            c.call("train.register", {"run_id": "r1"})

            def hw():
                h = c.call("train.report", {"state": _state()})["hardware"]
                return h if "tegrastats_mode" in h else None
            h = wait_for(hw, timeout=15, what="a report with the replayed tegrastats line")
            msg = _msg(train_pb2.HardwareContext, h)
            assert msg.tegrastats_mode == "replay" and msg.unified_memory is True
            got = (msg.ram_used_bytes, msg.ram_total_bytes, msg.gpu_load_percent, dict(msg.temperatures_c))
            assert got in _recorded()
            # temperature_c is the recorded board's tj, as sensing's sample says.
            assert msg.thermal_sensor == "tj" and msg.temperature_c == msg.temperatures_c["tj"]
            assert msg.HasField("power_mw") and msg.power_mw > 0
            # The memory view is this host's (or cgroup's) budget, not the replay's.
            assert 0.0 <= msg.used_fraction < 1.0 and msg.headroom_bytes > 0
            assert not msg.HasField("gpu_memory_used_bytes")      # no NVML here
            run = c.call("train.status", {"run_id": "r1"})["runs"][0]
            assert run["last_state"]["hardware"]["tegrastats_mode"] == "replay"
    finally:
        cleanup(d)


def test_without_tegrastats_or_nvml_the_gpu_fields_are_absent_not_zero():
    from aal_core.sources.nvml import LIBRARY
    import ctypes
    try:
        ctypes.CDLL(LIBRARY)
        pytest.skip("an NVIDIA driver library loads here: NVML would fill the GPU fields")
    except OSError:
        pass
    d = start_daemon(config=QUIET, tegrastats="off")
    try:
        with d.client() as c:
            c.call("train.register", {"run_id": "r1"})
            h = c.call("train.report", {"state": _state()})["hardware"]
            msg = _msg(train_pb2.HardwareContext, h)
            for f in ("gpu_memory_used_bytes", "gpu_memory_total_bytes", "gpu_load_percent", "ram_used_bytes",
                      "ram_total_bytes", "emc_load_percent", "unified_memory", "tegrastats_mode",
                      "temperature_c", "thermal_margin_c", "thermal_sensor", "power_mw"):
                assert not msg.HasField(f), f
                assert f not in h
            assert not msg.temperatures_c
            assert msg.HasField("used_fraction") and msg.HasField("headroom_bytes") and msg.band
    finally:
        cleanup(d)


# ------------------------------------------------------------------ telemetry

def test_telemetry_keeps_latest_metrics_bounded_and_ledgers_events_and_health():
    d = start_daemon(config=QUIET + "telemetry_metrics = 3\ntelemetry_events = 2\ntelemetry_packet_max = 8\n")
    try:
        with d.client() as c:
            c.call("train.register", {"run_id": "r1"})
            res = c.call("train.telemetry", {"packet": {
                "packet_id": "p1", "training_run_id": "r1", "health": "HEALTHY",
                "metrics": [{"name": "loss", "value": 2.0}, {"name": "grad_norm", "value": 5.0, "unit": "1"},
                            {"name": "lr", "value": 1e-3, "attributes": {"group": "0"}}]}})
            assert res["health_changed"] is True and res["metrics"] == 3 and res["ledger_index"] > 0
            _msg(train_pb2.TrainTelemetryResult, res)
            # Same series again (kept as its latest value), a new one (the oldest series forgotten),
            # three events (two kept), health unchanged: events ledgered, health not.
            res = c.call("train.telemetry", {"packet": {
                "packet_id": "p2", "training_run_id": "r1", "health": "HEALTHY",
                "metrics": [{"name": "loss", "value": 1.5}, {"name": "tokens_per_s", "value": 900.0}],
                "events": [{"name": "eval", "message": "a"}, {"name": "eval", "message": "b"},
                           {"name": "nan_skipped", "attributes": {"step": "7"}}]}})
            assert res["health_changed"] is False and res["events"] == 3
            c.call("train.telemetry", {"packet": {"packet_id": "p3", "training_run_id": "r1",
                                                  "health": "DEGRADED"}})
            st = c.call("train.status", {"run_id": "r1"})
            _msg(train_pb2.TrainStatusResult, st)
            tel = st["runs"][0]["telemetry"]
            assert tel["packets"] == 3 and tel["health"] == "DEGRADED"
            latest = {m["name"]: m["value"] for m in tel["metrics"]}
            assert latest == {"lr": 1e-3, "loss": 1.5, "tokens_per_s": 900.0}     # grad_norm forgotten
            assert [e.get("message", e["name"]) for e in tel["events"]] == ["b", "nan_skipped"]
            assert st["telemetry_packets_total"] == 3 and st["telemetry_events_total"] == 3
            assert c.call("system.status")["train"]["telemetry_packets_total"] == 3
        led = wait_for(lambda: (lambda x: x if len(x) == 3 else None)(ledger_data(d, "train.telemetry")),
                       what="three telemetry entries ledgered")
        assert [e.get("health") for e in led] == ["HEALTHY", None, "DEGRADED"]
        assert led[2]["previous_health"] == "HEALTHY" and len(led[1]["events"]) == 3
    finally:
        cleanup(d)


@pytest.mark.parametrize("packet, words", [
    ({"training_run_id": "r1", "health": "FINE"}, "packet.health must be one of"),
    ({"training_run_id": "r1", "metrics": [{"value": 1.0}]}, "metrics[0].name is empty"),
    ({"training_run_id": "r1", "events": [{"message": "x"}]}, "events[0].name is empty"),
    ({"training_run_id": "r1", "metrics": [{"name": f"m{i}", "value": 1.0} for i in range(9)]},
     "telemetry_packet_max is 8"),
    ({"training_run_id": "r1", "metrics": [{"name": "x", "value": "high"}]}, "value must be number"),
    ({"training_run_id": "nobody"}, "no training run"),
    ({"training_run_id": "r1", "events": [{"name": "log", "message": "x" * 40000}]}, "one ledger entry holds"),
])
def test_bad_telemetry_gets_a_clear_error_and_changes_nothing(packet, words):
    d = start_daemon(config=QUIET + "telemetry_packet_max = 8\n")
    try:
        with d.client() as c:
            c.call("train.register", {"run_id": "r1"})
            before = c.call("train.status")
            with pytest.raises(RpcCallError) as ei:
                c.call("train.telemetry", {"packet": packet})
            assert ei.value.code in (E.INVALID_PARAMS, E.NOT_FOUND) and words in ei.value.message
            assert c.call("train.status") == before
            assert c.call("system.health")          # still serving
    finally:
        cleanup(d)


# ---------------------------------------------------- a real torch loop

needs_torch = pytest.mark.skipif(torch is None, reason="no torch")


def _loop(tmp_path, d, run_id, *, samples=256, micro=32, lr=0.1):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU()), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x = torch.randn(samples, 8)
    y = x.sum(dim=1, keepdim=True)
    gov = GovernedTraining(run_id, model, opt, dataset_size=samples, micro_batch=micro,
                           checkpoint_dir=str(tmp_path / "ckpt"), report_every=1, socket_path=d.socket)
    assert gov.channel.wait_connected(10)
    return gov, model, opt, x, y


def _train(gov, model, opt, x, y, until, *, max_epochs=200, loss_at=None):
    """Plain PyTorch steps through gov until until() holds; loss_at(step) may replace the reported loss."""
    import time
    for epoch in range(max_epochs):
        for micro_batches in gov.steps(epoch):
            opt.zero_grad()
            total = 0.0
            for idx in micro_batches:
                loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
                gov.backward(loss, len(idx))
                total += loss.item() * len(idx)
            opt.step()
            reported = total / gov.effective_batch
            if loss_at is not None:
                reported = loss_at(gov.global_step + 1, reported)
            gov.step_done(reported)
            if until():
                return
            time.sleep(0.02)
    raise AssertionError("condition not reached")


@needs_torch
def test_a_cut_batch_scales_the_lr_and_recovery_restores_it(tmp_path):
    cfg = ("[train]\nhalve_at = 0.0\nbatch_halvings = 1\nmax_grad_accum = 1\nlr_rule = \"linear\"\n"
           "checkpointing_at = 0.98\npause_at = 0.99\nresume_below = 0.5\nhold_s = 0.0\n")
    d = start_daemon(config=cfg)
    try:
        gov, model, opt, x, y = _loop(tmp_path, d, "cut")
        try:
            _train(gov, model, opt, x, y, lambda: gov.micro_batch == 16 and gov.lr_scale == 0.5)
            # Micro-batch halved, accumulation at its max (1): the effective batch halved, the LR with it.
            assert gov.grad_accum == 1 and gov.effective_batch == 16
            assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.05)]
            assert [a["type"] for a in gov.applied] == ["optimizer_adjustment", "batch_adjustment"]
            run = d.call("train.status", {"run_id": "cut"})["runs"][0]
            assert run["rung_names"] == ["cut_batch_1"]
            # Recovery: the cut's rung is moved out of reach and the ladder descends.
            with open(os.path.join(d.base, "aal-core.toml"), "w") as fh:
                fh.write(cfg.replace("halve_at = 0.0", "halve_at = 0.97"))
            d.call("system.reload")
            _train(gov, model, opt, x, y, lambda: gov.micro_batch == 32 and gov.lr_scale == 1.0)
            assert gov.effective_batch == 32 and [g["lr"] for g in opt.param_groups] == [pytest.approx(0.1)]
            assert [a["type"] for a in gov.applied][2:] == ["optimizer_adjustment", "batch_adjustment"]
            cmds = wait_for(lambda: (lambda c: c if len(c) == 4 else None)(
                [e["command"] for e in ledger_data(d, "train.command") if e["run_id"] == "cut"]),
                what="four commands ledgered")
            assert [c.get("optimizer_adjustment", {}).get("lr_scale") for c in cmds[::2]] == [0.5, 1.0]
            reps = wait_for(lambda: (lambda r: r if len(r) == 4 else None)(ledger_data(d, "train.field_report")),
                            what="four field reports")
            assert {r["report"]["outcome"] for r in reps} == {"APPLIED"}
            assert {r["report"]["command_id"] for r in reps} == {c["command_id"] for c in cmds}
        finally:
            gov.close()
    finally:
        cleanup(d)


@needs_torch
def test_a_non_finite_loss_opens_the_breaker_the_loop_catches_it_and_a_finite_one_closes_it(tmp_path):
    d = start_daemon(config=QUIET)
    try:
        gov, model, opt, x, y = _loop(tmp_path, d, "nan")
        try:
            with pytest.raises(CircuitOpen) as ei:
                _train(gov, model, opt, x, y, lambda: False, max_epochs=20,
                       loss_at=lambda step, loss: float("nan") if step >= 3 else loss)
            assert "not finite" in ei.value.reason and gov.circuit_open
            # Still open (the loss still is not finite): the loop cannot step on.
            with pytest.raises(CircuitOpen):
                gov.step_done(float("nan"))
            # No checkpoint written with the poisoned weights.
            assert not os.path.exists(gov.checkpoint_path)
            run = d.call("train.status", {"run_id": "nan"})["runs"][0]
            assert run["circuit_breaker"]["open"] is True and run["circuit_breaker"]["opened_total"] == 1
            assert d.call("system.status")["train"]["breakers_open"] == 1
            # The loop restores good weights (here: the loss it reports is finite again) and waits.
            assert gov.wait_closed(timeout=15, loss=0.5) is True
            assert not gov.circuit_open
            run = d.call("train.status", {"run_id": "nan"})["runs"][0]
            assert run["circuit_breaker"]["open"] is False and "finite again" in run["circuit_breaker"]["reason"]
            _train(gov, model, opt, x, y, lambda: True)         # steps again
            gov.telemetry({"loss": 0.5}, events=["breaker_closed"], health="HEALTHY")
            wait_for(lambda: d.call("train.status", {"run_id": "nan"})["runs"][0]["telemetry"]["packets"] == 1,
                     what="the client's telemetry packet")
        finally:
            gov.close()
        cmds = [e["command"] for e in ledger_data(d, "train.command") if e["run_id"] == "nan"]
        assert [c["circuit_breaker"].get("open", False) for c in cmds] == [True, False]
        wait_for(lambda: len(ledger_data(d, "train.field_report")) == 2, what="both field reports")
        reps = [e["report"] for e in ledger_data(d, "train.field_report")]
        assert [r["outcome"] for r in reps] == ["APPLIED", "APPLIED"]
        assert reps[0]["metrics_after"]["circuit_open"] == 1.0 and reps[1]["metrics_after"]["circuit_open"] == 0.0
    finally:
        cleanup(d)


def test_stress_that_pausing_cannot_bring_down_opens_the_breaker():
    # Every real host is above 0.002: the run is paused at once and stays so.
    d = start_daemon(config="[train]\nbatch_halvings = 0\ncheckpointing_at = 0.001\npause_at = 0.002\n"
                            "resume_below = 0.001\nbreaker_paused_s = 0.5\n")
    ch = CommandChannel("r1", socket_path=d.socket)
    try:
        assert ch.wait_connected(10)
        ch.send_state(_state())
        got = []

        def breaker():
            got.extend(ch.commands())
            return [c for c in got if c.WhichOneof("payload") == "circuit_breaker"]
        (cb,) = wait_for(breaker, what="a circuit_breaker command")
        assert "pause" in [c.WhichOneof("payload") for c in got]
        assert cb.circuit_breaker.open and "while paused" in cb.circuit_breaker.reason
        assert cb.command_type == train_pb2.AdaptationCommand.CIRCUIT_BREAKER
        st = d.call("train.status", {"run_id": "r1"})["runs"][0]["circuit_breaker"]
        assert st["open"] is True and st["opened_total"] == 1
    finally:
        ch.close(flush_s=0)
        cleanup(d)


def test_nan_state_is_sent_as_the_proto3_json_mapping():
    pkt = {"training_run_id": "x", "training_loss": "NaN", "knobs": KNOBS}
    assert math.isnan(_msg(train_pb2.SystemStatePacket, pkt).training_loss)


def test_nvml_gpu_memory_is_taken_from_the_reading_behind_the_sample(tmp_path):
    """NVML cannot exist on this machine: the sensing unit's latest sample and
    the Reading behind it (the real dataclasses) stand in for one read with a
    discrete GPU; the report path only reads them."""
    from aal_core.clock import SYSTEM
    from aal_core.config import Config
    from aal_core.stress.sample import Reading, StressSample
    from aal_core.train.unit import TrainUnit
    from aal_core.units import Context

    class Sensed:
        tegra = None
        last_reading = Reading(t=1.0, wall=2.0, meminfo=None, gpu_mem=(3 << 30, 8 << 30))

        def latest(self):
            return StressSample(stress=0.3, band="MODERATE", model="fused", timestamp=2.0,
                                components={"used": 0.4, "headroom_mb": 100.0, "gpu_mem": 0.19})

    u = TrainUnit(Context(config=Config(), clock=SYSTEM, hub=None, state_dir=str(tmp_path)), sensing=Sensed())
    msg = _msg(train_pb2.HardwareContext, u._hardware())
    assert (msg.gpu_memory_used_bytes, msg.gpu_memory_total_bytes) == (3 << 30, 8 << 30)
    assert msg.unified_memory is False and not msg.HasField("tegrastats_mode")
    assert msg.headroom_bytes == 100 << 20 and msg.used_fraction == 0.4
