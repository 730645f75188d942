"""Thermal anomalies count only from a live tegrastats: the bundled replay's
temperatures belong to a recorded board, not to this machine."""
from aal_core.clock import ManualClock
from aal_core.config import Config
from aal_core.rpc.server import Hub
from aal_core.stress.unit import SensingUnit
from aal_core.units import Context

HOT = {"temps_c": {"tj": 97.25, "cpu": 96.0}}     # above the default 95 °C throttle point
COOL = {"temps_c": {"tj": 50.0, "cpu": 49.0}}


def _unit(command: str) -> SensingUnit:
    cfg = Config().with_overrides({"sense": {"tegrastats_command": command}})
    return SensingUnit(Context(config=cfg, clock=ManualClock(), hub=Hub(), state_dir="/nonexistent"))


def _cycle(unit: SensingUnit) -> dict:
    for line in (COOL, HOT, COOL, HOT):
        unit._on_tegra(line)
    return unit.anomaly_counters()


def test_live_source_counts_each_crossing():
    c = _cycle(_unit("/bin/true"))      # any command path is a live source
    assert c["thermal_breaches"] == 2 and c["throttle_events"] == 2


def test_replay_source_counts_nothing_but_still_shows_the_margin():
    u = _unit("replay")
    assert u.tegra.mode == "replay"
    c = _cycle(u)
    assert c["thermal_breaches"] == 0 and c["throttle_events"] == 0
    assert u._thermal["thermal_margin_c"] < 0
