"""Proven on a real loop (bench/governed_train.py, one run each): in a real
memory cgroup, with a second process ramping its memory up and down, the
example training loop is OOM-killed alone and finishes under aal-core, its
commands in the ledger and its final loss that of an unperturbed run of the
same seed within LOSS_RTOL."""
import os
import sys

import pytest

pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import governed_train as bench  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.root]
RAMP = dict(limit_mib=800, hog_mib=360, up_s=6.0, hold_s=6.0, down_s=3.0)


def test_killed_without_the_daemon_finished_with_it_and_the_loss_kept():
    if not os.path.exists("/sys/fs/cgroup/memory/memory.limit_in_bytes") and \
            not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        pytest.skip("no memory cgroup controller")
    ref = bench.run_once("reference", **RAMP)
    assert ref["rc"] == 0, ref.get("stderr")
    without = bench.run_once("without", **RAMP)
    assert without["killed"] and without["oom_kills"] >= 1, without
    assert without["steps_done"] < ref["steps"]
    with_ = bench.run_once("with", **RAMP)
    assert with_["rc"] == 0 and not with_["killed"] and with_["oom_kills"] == 0, \
        "\n".join([repr({k: v for k, v in with_.items() if k != "_timeline"}), *with_["_timeline"]])
    assert with_["steps"] == ref["steps"]
    # What it did under the ramp: at least a halving, and every command it
    # applied is in the ledger, with an APPLIED field report.
    assert "batch_adjustment" in with_["applied_types"]
    assert with_["_applied_ids"] and set(with_["_applied_ids"]) <= set(with_["_ledger_command_ids"])
    assert with_["_applied_ids"] == with_["_ledger_applied_ids"]
    rel = abs(with_["final_loss"] - ref["final_loss"]) / abs(ref["final_loss"])
    assert rel <= bench.LOSS_RTOL, (with_["final_loss"], ref["final_loss"])
