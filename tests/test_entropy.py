"""The torch model (client side) and the daemon's torch-free evaluation
agree to 1e-6; training on ledger-derived pairs behaves; the daemon never
imports torch."""
import json
import math
import os
import stat
import subprocess
import sys

import pytest
import torch  # a declared test dependency (client-torch): never skipped
from hypothesis import given, settings, strategies as st

from aal_core.client.entropy import EntropyModel, pairs_from_entries, train
from aal_core.venom.entropy import FORMAT, EntropyParams, ModelError, load_model, parse_model, sigmoid, write_model


def test_initial_parameters_are_the_seed_ones():
    m = EntropyModel()
    assert m.parameters_exact() == (pytest.approx(0.12, abs=1e-8), 0.0)
    d = EntropyParams()
    xs = list(range(0, 200)) + [500, 1000, 10_000]
    torch_t = m.threat(xs).tolist()
    for x, t in zip(xs, torch_t):
        assert abs(d.threat(x) - t) <= 1e-6


@settings(max_examples=60, deadline=None)
@given(w=st.floats(-3, 3), b=st.floats(-20, 20),
       xs=st.lists(st.integers(0, 100_000), min_size=1, max_size=50))
def test_exported_model_matches_torch(tmp_path_factory, w, b, xs):
    m = EntropyModel(w, b)
    path = str(tmp_path_factory.mktemp("m") / "model.json")
    m.export(path)
    d = load_model(path)
    assert (d.weight, d.bias) == m.parameters_exact()
    for x, t in zip(xs, m.threat(xs).tolist()):
        assert abs(d.threat(x) - t) <= 1e-6, (x, d.threat(x), t)


def test_after_training_daemon_equals_torch(tmp_path):
    # outcome follows many anomalies: the weight should grow, the bias fall
    pairs = [(0.0, 0.0, 50), (1.0, 0.0, 10), (2.0, 0.0, 5), (8.0, 1.0, 5), (12.0, 1.0, 5), (30.0, 1.0, 3)]
    m, losses = train(pairs, epochs=300, lr=0.05)
    assert losses[-1] < losses[0] * 0.5
    w, b = m.parameters_exact()
    assert b < 0                                    # 0 anomalies → low threat now
    m.export(str(tmp_path / "m.json"), note="test")
    d = load_model(str(tmp_path / "m.json"))
    assert d.meta["note"] == "test"
    for x in range(0, 60):
        assert abs(d.threat(x) - float(m.threat(x))) <= 1e-6
    assert d.threat(0) < 0.3 and d.threat(30) > 0.7


def test_train_step_is_mse_and_moves_downhill():
    m = EntropyModel()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, y = [0.0, 10.0], [0.0, 1.0]
    pred = [sigmoid(0.12 * v) for v in x]
    want = sum((p - t) ** 2 for p, t in zip(pred, y)) / 2
    first = m.train_step(x, y, opt)
    assert first == pytest.approx(want, rel=1e-5)
    second = m.train_step(x, y, opt)
    assert second < first


def test_update_weight():
    m = EntropyModel()
    m.update_weight(0.5)
    assert m.parameters_exact()[0] == 0.5 and m.parameters_exact()[1] == 0.0
    m.update_weight(-0.25, 1.5)
    assert m.parameters_exact() == (-0.25, 1.5)


def _decision(t, total, oom=0, crit=0):
    return {"timestamp": t, "data": {"type": "venom.decision", "time": t, "action": "ALERT",
                                     "anomalies": {"total": total, "oom_kills": oom, "critical_samples": crit}}}


def test_pairs_from_entries_outcome_within_horizon():
    entries = [
        {"timestamp": 0, "data": {"type": "genesis"}},
        _decision(100.0, 5),                       # OOM at 130 → within 60 s → 1
        _decision(130.0, 7, oom=1),                # next event at 400 → 0
        {"timestamp": 200.0, "data": {"type": "venom.summary", "time": 200.0, "window_s": 60.0,
                                      "noop_anomaly_hist": {"0": 55, "1": 5}, "noop_anomalies": {}}},
        {"timestamp": 300.0, "data": {"type": "venom.model"}},
        _decision(400.0, 20, crit=3),              # last: within horizon of the end → dropped
        _decision(450.0, 0),
    ]
    pairs = pairs_from_entries(entries, horizon_s=60.0)
    assert (5.0, 1.0, 1) in pairs
    assert (7.0, 0.0, 1) in pairs
    assert (0.0, 0.0, 55) in pairs and (1.0, 0.0, 5) in pairs     # summary at mid-window 170
    assert all(p[0] != 20.0 for p in pairs)
    assert len(pairs) == 4


@pytest.mark.parametrize("body,msg", [
    (b"{", "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[1]", "expected a JSON object"),
    (json.dumps({"format": "x", "weight": 1, "bias": 0}).encode(), "'format' must be"),
    (json.dumps({"format": FORMAT, "weight": "1", "bias": 0}).encode(), "'weight' must be a number"),
    (json.dumps({"format": FORMAT, "weight": 1}).encode(), "'bias' must be a number"),
    (b'{"format": "aal-core.entropy.v1", "weight": NaN, "bias": 0}', "'weight' must be finite"),
    (b'{"format": "aal-core.entropy.v1", "weight": 1e999, "bias": 0}', "'weight' must be finite"),
])
def test_bad_model_files_are_clear_errors(tmp_path, body, msg):
    p = tmp_path / "m.json"
    p.write_bytes(body)
    with pytest.raises(ModelError, match=msg) as ei:
        load_model(str(p))
    assert str(p) in str(ei.value)


def test_missing_and_oversized_model_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(str(tmp_path / "nope.json"))
    with pytest.raises(ModelError, match="is a directory"):
        load_model(str(tmp_path))
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 70_000)
    with pytest.raises(ModelError, match="too large"):
        load_model(str(big))


def test_write_model_replaces_a_crash_leftover_temp_file(tmp_path):
    """A temp file a crash left (here 0600, half written) is not reused: the
    model is written afresh, 0644 whatever the umask (the daemon, another
    user, reads what a client exports), and no temp file stays."""
    path, tmp = tmp_path / "m.json", tmp_path / "m.json.tmp"
    tmp.write_bytes(b'{"format": "aal-core.entropy.v1", "wei')
    os.chmod(tmp, 0o600)
    old = os.umask(0o077)
    try:
        write_model(str(path), 0.25, -1.5, trained_on=3)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert not tmp.exists()
    m = load_model(str(path))
    assert (m.weight, m.bias, m.meta["trained_on"]) == (0.25, -1.5, 3)


def test_write_model_failure_is_a_model_error_and_leaves_no_temp_file(tmp_path):
    """The rename fails (a directory is in the way): ModelError names the
    path and the cause, the directory is untouched and the temp file gone."""
    path = tmp_path / "m.json"
    path.mkdir()
    (path / "keep").write_text("x")
    with pytest.raises(ModelError, match=r"cannot write model file .*m\.json: Is a directory"):
        write_model(str(path), 0.25, -1.5)
    assert (path / "keep").read_text() == "x"
    assert sorted(os.listdir(tmp_path)) == ["m.json"]


def test_sigmoid_is_overflow_free():
    assert sigmoid(1e6) == 1.0 and sigmoid(-1e6) == 0.0
    assert sigmoid(0.0) == 0.5
    assert parse_model(json.dumps({"format": FORMAT, "weight": 1e300, "bias": 0}).encode(),
                       "x").threat(1e10) == 1.0


def test_daemon_never_imports_torch():
    code = ("import sys, aal_core.app, aal_core.venom, aal_core.venom.unit, aal_core.venom.engine;"
            "import aal_core.__main__; from aal_core.venom.standalone import cmd_venom;"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
