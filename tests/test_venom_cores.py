"""Each formula of the loop pinned: the four cores, the decision vector and
rule, recalibration (ΔO limit, E decay under threat, renormalisation), and
the arbiter's beat on a manual clock with the compiled PID."""
import math

import pytest
from hypothesis import given, strategies as st

from aal_core.pid_ref import PID as RefPID
from aal_core.venom import Anomalies, AnomalyCounter, Arbiter, EntropyParams, Genome
from aal_core.venom.cores import (BalanceCore, BeatInputs, InlineRunner, ThreadRunner, entropy,
                                  optimize, regen)
from aal_core.venom.genome import (Action, DecisionVector, decide, decision_vector, delta_o,
                                   e_weight, recalibrate)


def inp(anoms=0, t_lambda=0.02, t_threshold=0.02, o=0.35, model=EntropyParams()):
    return BeatInputs(anoms=anoms, t_lambda=t_lambda, t_threshold=t_threshold, o_weight=o, model=model)


# ---------------------------------------------------------------- cores

@pytest.mark.parametrize("anoms,urgency", [(0, 0.4), (1, 0.01), (50, 0.5), (90, 0.9), (1000, 0.9)])
def test_regen(anoms, urgency):
    r = regen(inp(anoms))
    assert r.urgency == pytest.approx(urgency)
    assert r.cost == pytest.approx(urgency * 0.5)


@pytest.mark.parametrize("tl,conserve", [(0.02, 0.5), (1.0, 0.304), (0.0042, 0.3 + (1 - 0.0158) * 0.2),
                                         (3.0, 0.0), (6.0, 0.0)])
def test_balance_conserve_clamped(tl, conserve):
    b = BalanceCore()(inp(t_lambda=tl))
    assert b.conserve == pytest.approx(conserve)
    assert (b.kp, b.ki, b.kd) == (0.6, 0.1, 0.05)


def test_balance_running_state():
    core = BalanceCore()
    s1 = core(inp(t_lambda=0.02)).balance_state   # (0.5 + 0.5)/2
    s2 = core(inp(t_lambda=1.0)).balance_state    # (0.5 + 0.304)/2
    assert (s1, s2) == (pytest.approx(0.5), pytest.approx(0.402))


@given(st.integers(0, 10_000), st.floats(-5, 5), st.floats(-50, 50))
def test_entropy_is_sigmoid_of_model(anoms, w, b):
    t = entropy(inp(anoms, model=EntropyParams(w, b))).threat
    z = w * anoms + b
    want = 1 / (1 + math.exp(-z)) if z > -700 else 0.0
    assert t == pytest.approx(want, abs=1e-12)
    assert 0.0 <= t <= 1.0


def test_entropy_default_model():
    assert entropy(inp(0)).threat == 0.5
    assert entropy(inp(10)).threat == pytest.approx(1 / (1 + math.exp(-1.2)))


@pytest.mark.parametrize("o,gain", [(0.35, 0.042), (1.0, 0.12), (5.0, 0.5), (0.0, 0.0)])
def test_optimize(o, gain):
    assert optimize(inp(o=o)).expected_gain == pytest.approx(gain)


@given(st.integers(0, 500), st.floats(1e-6, 10), st.floats(0, 1))
def test_thread_pool_and_inline_agree(anoms, tl, o):
    i = inp(anoms, t_lambda=tl, o=o)
    pool = ThreadRunner()
    try:
        assert pool.run(BalanceCore(), i) == InlineRunner().run(BalanceCore(), i)
    finally:
        pool.close()


# ------------------------------------------------------- decision vector

def test_decision_vector_weights_each_core():
    from aal_core.venom.cores import CoreOutputs
    cores = CoreOutputs(regen(inp(4)), BalanceCore()(inp()), entropy(inp(4)), optimize(inp(o=0.35)))
    g = Genome(0.25, 0.25, 0.15, 0.35)
    v = decision_vector(cores, g)
    assert v.repair == pytest.approx(0.04 * 0.25)
    assert v.stability == pytest.approx(0.5 * 0.25)
    assert v.threat == pytest.approx(cores.e.threat * 0.15)
    assert v.opt_gain == pytest.approx(0.042 * 0.35)
    assert (v.raw_threat, v.raw_urgency, v.raw_conserve, v.raw_gain) == (
        cores.e.threat, 0.04, 0.5, pytest.approx(0.042))


def vec(raw_threat=0.5, stability=0.0, repair=1.0, opt_gain=0.0):
    return DecisionVector(threat=0, stability=stability, repair=repair, opt_gain=opt_gain,
                          raw_threat=raw_threat, raw_urgency=0, raw_conserve=0, raw_gain=0)


@pytest.mark.parametrize("v,action", [
    (vec(raw_threat=0.85), Action.QUARANTINE),
    (vec(raw_threat=0.849999), Action.ALERT),
    (vec(raw_threat=0.60), Action.ALERT),
    (vec(raw_threat=0.599999, stability=0.3, repair=0.0), Action.APPLY_BALANCE),
    (vec(stability=0.250001, repair=0.099999), Action.APPLY_BALANCE),
    (vec(stability=0.25, repair=0.05), Action.NOOP),          # strictly greater
    (vec(stability=0.3, repair=0.10), Action.NOOP),           # strictly less
    (vec(stability=0.3, repair=0.10, opt_gain=0.11), Action.APPLY_OPTIMIZE),
    (vec(opt_gain=0.100001), Action.APPLY_OPTIMIZE),
    (vec(opt_gain=0.1), Action.NOOP),
    (vec(raw_threat=0.9, stability=1, repair=0, opt_gain=1), Action.QUARANTINE),  # threat first
])
def test_decide_thresholds(v, action):
    assert decide(v) is action


# ---------------------------------------------------------- recalibrate

@pytest.mark.parametrize("u,d", [(0.0, 0.0), (0.01, -0.01), (-0.03, 0.03), (0.7, -0.05), (-9, 0.05)])
def test_delta_o_is_negative_feedback_limited(u, d):
    assert delta_o(u) == pytest.approx(d)


def test_e_decay_formula():
    # 0.15 · threat · e^(−t/50) · (1 − O/0.3)
    assert e_weight(0.9, 0, 0.0) == pytest.approx(0.135)
    assert e_weight(0.9, 10, 0.1) == pytest.approx(0.15 * 0.9 * math.exp(-0.2) * (1 - 0.1 / 0.3))
    assert e_weight(1.0, 0, 0.35) == 0.05      # O above 0.3: factor 0, clamped to the floor
    assert e_weight(0.6, 1000, 0.0) == 0.05    # decayed away: floor


@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0.01, 1),
       st.floats(-3, 3), st.floats(0, 1), st.integers(0, 500))
def test_recalibrate_invariants(r, b, e, o, u, threat, t):
    g = Genome.normalised(r, b, e, o)
    nxt, d = recalibrate(g, u, threat, t)
    assert abs(d) <= 0.05
    assert nxt.r + nxt.b + nxt.e + nxt.o == pytest.approx(1.0)
    assert min(nxt.r, nxt.b, nxt.e, nxt.o) >= 0
    # R and B keep their ratio (only O and E are set)
    if g.b > 1e-9 and nxt.b > 1e-12:
        assert nxt.r / nxt.b == pytest.approx(g.r / g.b, rel=1e-9)
    if threat <= 0.5 and 0.1 <= g.o <= 0.9:
        # E unchanged before normalisation, so O moves by at most the limit
        assert abs(nxt.o - g.o) <= 0.05 + 1e-12


def test_recalibrate_pinned_numbers():
    g = Genome(0.25, 0.25, 0.15, 0.35)
    # no threat: O += 0.05 then renormalise by 1.05
    nxt, d = recalibrate(g, -0.2, 0.3, 0)
    assert d == pytest.approx(0.05)
    assert (nxt.r, nxt.b, nxt.e, nxt.o) == pytest.approx((0.25 / 1.05, 0.25 / 1.05, 0.15 / 1.05, 0.40 / 1.05))
    # threat 0.8, O falls to 0.30 (ΔO = −0.05): E = max(0.05, 0.15·0.8·e^(−2/50)·0) = 0.05
    nxt, d = recalibrate(g, 0.2, 0.8, 2)
    total = 0.25 + 0.25 + 0.05 + 0.30
    assert (nxt.o, nxt.e, nxt.r) == (pytest.approx(0.30 / total), pytest.approx(0.05 / total),
                                     pytest.approx(0.25 / total))
    # O clamped at 0.1 below; with O = 0.1 the E factor is 2/3
    g2 = Genome(0.3, 0.3, 0.3, 0.1)
    nxt, _ = recalibrate(g2, 1.0, 1.0, 0)
    e = 0.15 * 1.0 * 1.0 * (1 - 0.1 / 0.3)
    total = 0.3 + 0.3 + e + 0.1
    assert (nxt.o, nxt.e) == (pytest.approx(0.1 / total), pytest.approx(e / total))


def test_genome_normalised_rejects_bad_weights():
    with pytest.raises(ValueError, match="not all be 0"):
        Genome.normalised(0, 0, 0, 0)
    with pytest.raises(ValueError, match="weight B"):
        Genome.normalised(1, -1, 0, 0)
    with pytest.raises(ValueError, match="weight O"):
        Genome.normalised(1, 1, 1, float("nan"))
    assert Genome.normalised(1, 1, 1, 1) == Genome(0.25, 0.25, 0.25, 0.25)


# -------------------------------------------------------------- anomalies

def test_anomaly_counter_increments():
    c = AnomalyCounter()
    base = {"critical_samples": 5, "oom_kills": 2, "unacked_directives": 4}
    assert c.step(base).total == 0                       # baseline, nothing this beat
    a = c.step({"critical_samples": 8, "oom_kills": 2, "throttle_events": 1, "unacked_directives": 6},
               late=1)
    assert (a.critical_samples, a.oom_kills, a.throttle_events, a.unacked_directives, a.late_beats) == \
        (3, 0, 1, 2, 1)
    assert a.total == 7
    a = c.step({"critical_samples": 8, "oom_kills": 2, "throttle_events": 1, "unacked_directives": 6})
    assert a.total == 0                                  # overdue ones were counted once, when they became so
    a = c.step({"critical_samples": 1, "unacked_directives": 7})  # a source restarted: counts from its new value
    assert (a.critical_samples, a.oom_kills, a.unacked_directives) == (1, 0, 1)


# ---------------------------------------------------------------- arbiter

def test_arbiter_beat_uses_pid_on_t_lambda_error():
    pid = RefPID(setpoint=0.02)
    a = Arbiter(t_lambda=1.0, t_threshold=0.02, pid=pid)
    r = a.beat(Anomalies(), 1.0)
    assert r.pid["error"] == pytest.approx(0.98)           # error = T_Λ − T_threshold
    # PID output is rate-limited to 0.05 per update, ΔO = −output limited to ±0.05
    assert r.pid["output"] == pytest.approx(0.05)
    assert r.delta_o == pytest.approx(-0.05)
    assert r.genome == Genome() and r.genome_next.o == pytest.approx(0.30 / 0.95)
    assert r.action is Action.NOOP
    assert a.genome == r.genome_next


def test_arbiter_compiled_pid_matches_reference():
    a1 = Arbiter(t_lambda=0.0042, t_threshold=0.02)             # compiled aal_core.pid
    a2 = Arbiter(t_lambda=0.0042, t_threshold=0.02, pid=RefPID(setpoint=0.02))
    for n in [0, 3, 0, 20, 5, 0, 0, 1]:
        r1, r2 = a1.beat(Anomalies(oom_kills=n), 0.0042), a2.beat(Anomalies(oom_kills=n), 0.0042)
        assert r1.action is r2.action
        assert tuple(vars(r1.genome_next).values()) == pytest.approx(tuple(vars(r2.genome_next).values()), rel=1e-12)


@pytest.mark.parametrize("n,action", [(0, Action.NOOP), (3, Action.NOOP), (4, Action.ALERT),
                                      (14, Action.ALERT), (15, Action.QUARANTINE)])
def test_default_genome_anomaly_gradient(n, action):
    # n events (not samples) in the evidence window: σ(0.12·n)
    assert Arbiter(t_lambda=1.0).beat(Anomalies(oom_kills=n), 1.0).action is action


@pytest.mark.parametrize("n", [1, 5, 50])
def test_critical_samples_weigh_their_time_not_their_count(n):
    r = Arbiter(t_lambda=1.0).beat(Anomalies(critical_samples=n), 1.0)
    assert r.evidence.value == 2.0 and r.action is Action.NOOP      # one CRITICAL second: 2 units


def test_balance_first_genome_applies_balance_on_light_anomalies():
    # README example: B-heavy genome, T_threshold = the beat (conserve = 0.5)
    g = Genome.normalised(0.30, 0.55, 0.05, 0.10)
    a = Arbiter(t_lambda=1.0, t_threshold=1.0, genome=g)
    assert a.beat(Anomalies(), 1.0).action is Action.NOOP               # repair 0.4·0.3 = 0.12
    assert a.beat(Anomalies(oom_kills=2), 1.0).action is Action.APPLY_BALANCE
    assert a.beat(Anomalies(oom_kills=5), 1.0).action is Action.ALERT


def test_optimize_fires_when_o_dominates():
    g = Genome.normalised(0.02, 0.02, 0.01, 0.95)
    # T_Λ below threshold keeps pushing O up: opt_gain = min(0.5, 0.12·O)·O > 0.1
    r = Arbiter(t_lambda=0.0042, t_threshold=0.02, genome=g).beat(Anomalies(), 0.0042)
    assert r.vector.opt_gain > 0.1 and r.action is Action.APPLY_OPTIMIZE


def test_e_episode_clock_restarts():
    a = Arbiter(t_lambda=1.0, t_threshold=1.0, genome=Genome(0.3, 0.3, 0.3, 0.1),
                pid=RefPID(setpoint=1.0), evidence_window_s=1.0)      # evidence of this beat only
    a.beat(Anomalies(oom_kills=10), 1.0)
    assert a.episode_beats == 0
    a.beat(Anomalies(oom_kills=10), 1.0)
    assert a.episode_beats == 1
    a.beat(Anomalies(), 1.0)                     # threat 0.5: episode over
    assert a.episode_beats == -1
