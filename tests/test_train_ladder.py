"""The policy ladder (aal_core.train.ladder): pure, a manual clock."""
import dataclasses

import pytest

from aal_core.config import ConfigError, TrainConfig, from_mapping
from aal_core.train.ladder import Knobs, Ladder, build_rungs, commands_between, knobs_at

CFG = TrainConfig()


def test_rungs_halve_then_checkpoint_then_pause_and_keep_the_effective_batch():
    rungs = build_rungs(CFG, 64)
    assert [r.name for r in rungs] == ["halve_batch_1", "halve_batch_2", "activation_checkpointing", "pause"]
    base = Knobs(64, 2)
    seen = [knobs_at(rungs, i, base) for i in range(len(rungs) + 1)]
    assert [(k.micro_batch, k.grad_accum) for k in seen] == [(64, 2), (32, 4), (16, 8), (16, 8), (16, 8)]
    assert all(k.micro_batch * k.grad_accum == 128 for k in seen)
    assert [k.checkpointing for k in seen] == [False, False, False, True, True]
    assert [k.paused for k in seen] == [False, False, False, False, True]


def test_halvings_stop_where_the_micro_batch_is_odd_or_at_the_minimum():
    assert [r.name for r in build_rungs(CFG, 6)][:2] == ["halve_batch_1", "activation_checkpointing"]
    assert build_rungs(CFG, 5)[0].name == "activation_checkpointing"
    cfg = dataclasses.replace(CFG, min_micro_batch=32, batch_halvings=4)
    assert sum(r.name.startswith("halve") for r in build_rungs(cfg, 64)) == 1


def test_climbs_at_once_and_descends_one_rung_per_hold_with_hysteresis():
    lad = Ladder(build_rungs(CFG, 64), hold_s=3.0)
    assert lad.evaluate(0.5, 0.0) is None
    rung, why = lad.evaluate(0.9, 1.0)                 # straight to pause
    assert rung == 4 and "pause" in why
    assert lad.evaluate(0.7, 2.0) is None              # above resume_below 0.6: stays paused
    assert lad.evaluate(0.55, 3.0) is None             # below: the hold starts
    assert lad.evaluate(0.55, 5.9) is None
    assert lad.evaluate(0.55, 6.0)[0] == 3             # pause lifted after 3 s
    # checkpointing's exit line is 0.75 - 0.1 = 0.65: at 0.55 a full hold again
    assert lad.evaluate(0.55, 8.9) is None
    assert lad.evaluate(0.55, 9.0)[0] == 2
    # halve_batch_2 (0.65) exits below 0.55: 0.56 holds it for ever
    for t in range(10, 30):
        assert lad.evaluate(0.56, float(t)) is None
    assert lad.evaluate(0.5, 30.0) is None
    assert lad.evaluate(0.5, 33.0)[0] == 1


def test_a_signal_inside_the_hysteresis_band_never_flaps():
    lad = Ladder(build_rungs(CFG, 64), hold_s=0.0)
    assert lad.evaluate(0.61, 0.0)[0] == 1
    changes = [lad.evaluate(0.52 + 0.08 * (i % 2), float(i)) for i in range(1, 100)]
    assert changes == [None] * 99 and lad.rung == 1


def test_a_rise_during_the_hold_restarts_it():
    lad = Ladder(build_rungs(CFG, 64), hold_s=3.0)
    lad.evaluate(0.61, 0.0)
    assert lad.evaluate(0.4, 1.0) is None
    assert lad.evaluate(0.58, 3.0) is None             # back above the exit line
    assert lad.evaluate(0.4, 4.0) is None
    assert lad.evaluate(0.4, 6.9) is None
    assert lad.evaluate(0.4, 7.0)[0] == 0


def test_commands_between_in_ladder_order_both_ways():
    base, top = Knobs(64, 1), Knobs(16, 4, True, True)
    up = commands_between(base, top, resume_below=0.6)
    assert [f for f, _ in up] == ["batch_adjustment", "memory_saving", "checkpoint", "pause"]
    assert up[0][1] == {"micro_batch": 16, "grad_accum_steps": 4}
    assert up[3][1] == {"until_stress_below": 0.6}
    down = commands_between(top, base, resume_below=0.6)
    assert [f for f, _ in down] == ["resume", "memory_saving", "batch_adjustment"]
    mid = Knobs(16, 4, True, False)
    assert [f for f, _ in commands_between(mid, base, resume_below=0.6)] == ["memory_saving", "batch_adjustment"]
    assert commands_between(base, base, resume_below=0.6) == []


@pytest.mark.parametrize("body, words", [
    ({"checkpointing_at": 0.6}, "checkpointing_at must be above"),
    ({"pause_at": 0.7}, "pause_at must be above"),
    ({"resume_below": 0.9}, "resume_below must be below"),
    ({"hold_s": -1}, "train.hold_s must be between"),
    ({"batch_halvings": "2"}, "must be an integer"),
])
def test_bad_train_config_is_refused_with_its_key(body, words):
    with pytest.raises(ConfigError, match=words):
        from_mapping({"train": body}, "t.toml")


def test_a_halving_past_max_grad_accum_cuts_the_effective_batch_and_scales_the_lr():
    cfg = dataclasses.replace(CFG, batch_halvings=3, max_grad_accum=4, checkpointing_at=0.75, halve_step=0.05)
    rungs = build_rungs(cfg, 64, 2)
    assert [r.name for r in rungs] == ["halve_batch_1", "cut_batch_1", "cut_batch_2",
                                       "activation_checkpointing", "pause"]
    base = Knobs(64, 2)
    seen = [knobs_at(rungs, i, base, "sqrt") for i in range(4)]
    assert [(k.micro_batch, k.grad_accum) for k in seen] == [(64, 2), (32, 4), (16, 4), (8, 4)]
    assert [k.lr_scale for k in seen] == [1.0, 1.0, pytest.approx(0.5 ** 0.5), pytest.approx(0.5)]
    assert knobs_at(rungs, 3, base, "linear").lr_scale == pytest.approx(0.25)
    # "off": no cut rungs, the ladder goes on with checkpointing.
    off = dataclasses.replace(cfg, lr_rule="off")
    assert [r.name for r in build_rungs(off, 64, 2)] == ["halve_batch_1", "activation_checkpointing", "pause"]


def test_the_lr_scale_travels_with_its_batch_change_both_ways():
    base, cut = Knobs(64, 4), Knobs(32, 4, lr_scale=0.5)
    up = commands_between(base, cut, resume_below=0.6)
    assert up == [("optimizer_adjustment", {"lr_scale": 0.5}),
                  ("batch_adjustment", {"micro_batch": 32, "grad_accum_steps": 4})]
    down = commands_between(cut, base, resume_below=0.6)
    assert down == [("optimizer_adjustment", {"lr_scale": 1.0}),
                    ("batch_adjustment", {"micro_batch": 64, "grad_accum_steps": 4})]


def test_lr_rule_is_checked_at_load():
    with pytest.raises(ConfigError, match="lr_rule must be one of"):
        from_mapping({"train": {"lr_rule": "cubic"}}, "t.toml")


def test_a_rung_is_not_lifted_while_the_rung_below_would_bring_its_own_peak_over_the_line():
    lad = Ladder(build_rungs(CFG, 64), hold_s=1.0)
    assert lad.evaluate(0.61, 0.0)[0] == 1             # halve_batch_1: exit below 0.5
    for t in range(1, 10):                              # stress low, but the base peak would be 0.55
        assert lad.evaluate(0.3, float(t), below=0.55) is None
    assert lad.evaluate(0.3, 10.0, below=0.45) is None  # the hold starts now
    assert lad.evaluate(0.3, 11.0, below=0.45)[0] == 0
