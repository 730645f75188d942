"""`python -m aal_core.client.entropy train` as a user runs it: pairs from the
real ledger file of a running daemon that went through a CRITICAL spell,
trained in torch, exported, loaded into that daemon with venom.set_model;
the daemon's threat then equals torch's to 1e-6.  And its error paths."""
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
import torch  # noqa: F401 - a declared test dependency: the CLI needs it, never skipped

from aal_core.client import Client
from aal_core.client import entropy as cli
from aal_core.ledger import Ledger
from helpers import short_tmpdir, wait_for
from test_venom_e2e import FAST, make_proc, meminfo_nearly_exhausted, next_matching, rewrite_in_place


def summaries(d) -> int:
    n = d.call("ledger.manifest")["chain_length"]
    got = d.call("ledger.get", {"start": max(0, n - 1000), "end": n})["entries"]
    return sum(1 for e in got if e["data"].get("type") == "venom.summary")


def test_train_from_the_live_ledger_file_and_set_model(daemon_factory, tmp_path):
    base = short_tmpdir()
    proc = make_proc(base)
    meminfo = os.path.join(proc, "meminfo")
    with open(meminfo, "rb") as fh:
        calm = fh.read()
    d = daemon_factory("--proc-root", proc, base=base, config=FAST)
    wait_for(lambda: summaries(d) >= 1)                    # an idle second
    rewrite_in_place(meminfo, meminfo_nearly_exhausted(calm))
    time.sleep(2.5)                                        # 2.5 CRITICAL seconds: 5 units, ALERT beats
    rewrite_in_place(meminfo, calm)
    before = summaries(d)
    wait_for(lambda: summaries(d) >= before + 2, timeout=15)   # then calm again

    ledger_file = os.path.join(base, "state", "ledger.aal")
    out = str(tmp_path / "entropy.json")
    n_before = d.call("ledger.manifest")["chain_length"]
    r = subprocess.run([sys.executable, "-m", "aal_core.client.entropy", "train", "--ledger", ledger_file,
                        "--socket", d.socket, "--out", out, "--horizon", "0.5", "--set-model"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "loaded into the daemon" in r.stdout

    # the file: trained on the ledger's beats, parameters moved off the seed's
    with open(out, "rb") as fh:
        raw = fh.read()
    model = json.loads(raw)
    assert model["format"] == "aal-core.entropy.v1" and model["trained_pairs"] >= 10
    assert (model["weight"], model["bias"]) != (0.12, 0.0)
    # the pairs were what the file held when it was read (read-only, beside
    # the daemon, which went on appending): between its length before and after
    led = Ledger.open(ledger_file, create=False, repair_torn_tail=False)
    try:
        entries = led.entries(0, led.count)
    finally:
        led.close()
    fewest = cli.pairs_from_entries(entries[:n_before], 0.5)
    most = cli.pairs_from_entries(entries, 0.5)
    assert sum(n for *_, n in fewest) <= model["trained_pairs"] <= sum(n for *_, n in most)
    assert {y for _, y, _ in fewest} == {0.0, 1.0}          # both outcomes were there to learn

    # the daemon took it: status, the saved copy, the ledger
    st = d.call("venom.status")["model"]
    assert (st["weight"], st["bias"]) == (model["weight"], model["bias"])
    assert st["source"] == out and st["sha3"] == hashlib.sha3_256(raw).hexdigest()
    n = d.call("ledger.manifest")["chain_length"]
    recorded = [e["data"] for e in d.call("ledger.get", {"start": max(0, n - 1000), "end": n})["entries"]
                if e["data"].get("type") == "venom.model"]
    assert recorded and recorded[-1]["model"]["weight"] == model["weight"]

    # and its threat on the next anomalous beats equals torch's to 1e-6
    torch_model = cli.EntropyModel(model["weight"], model["bias"])
    with Client(d.socket, timeout=10) as c:
        it = c.subscribe("venom", {"include_noop": True})
        rewrite_in_place(meminfo, meminfo_nearly_exhausted(calm))
        xs = [next_matching(it, lambda x: x["anomalies"]["total"] > 0) for _ in range(3)]
        rewrite_in_place(meminfo, calm)
    for x in xs:
        assert x["model"] == {"weight": model["weight"], "bias": model["bias"]}
        want = float(torch_model.threat(x["evidence"]["value"]))      # the model sees the evidence
        assert abs(x["decision"]["raw_threat"] - want) <= 1e-6, (x["anomalies"], want)


def test_missing_ledger_file_is_exit_2_and_creates_nothing(tmp_path, capsys):
    path = tmp_path / "nope.aal"
    assert cli.main(["train", "--ledger", str(path), "--out", str(tmp_path / "m.json")]) == 2
    assert "no ledger at" in capsys.readouterr().err
    assert not path.exists() and not (tmp_path / "m.json").exists()


def test_damaged_ledger_is_exit_2_naming_the_index(tmp_path, capsys):
    path = str(tmp_path / "l.aal")
    led = Ledger.open(path)
    led.append({"x": 1})
    led.close()
    with open(path, "r+b") as fh:
        fh.seek(-40, os.SEEK_END)
        b = fh.read(1)
        fh.seek(-40, os.SEEK_END)
        fh.write(bytes([b[0] ^ 1]))
    assert cli.main(["train", "--ledger", path, "--out", str(tmp_path / "m.json")]) == 2
    assert "entry 1" in capsys.readouterr().err


def test_no_pairs_is_exit_1(tmp_path, capsys):
    path = str(tmp_path / "l.aal")
    Ledger.open(path).close()                              # genesis only
    assert cli.main(["train", "--ledger", path, "--out", str(tmp_path / "m.json")]) == 1
    assert "no (anomalies, outcome) pairs" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_an_unwritable_out_is_exit_2_naming_it(tmp_path, capsys):
    path = str(tmp_path / "l.aal")
    led = Ledger.open(path)
    for i in range(8):                      # beats with and without evidence, then a late entry
        led.append({"type": "venom.decision", "time": 100.0 + i, "evidence": {"value": float(i % 3)},
                    "anomalies": {"total": i % 3}})
    led.append({"type": "venom.decision", "time": 1000.0, "evidence": {"value": 0.0}, "anomalies": {"total": 0}})
    led.close()
    out = tmp_path / "no-such-dir" / "m.json"
    assert cli.main(["train", "--ledger", path, "--out", str(out), "--horizon", "5", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the model" in err and str(out.parent) in err
    assert not out.parent.exists()


def test_unreachable_daemon_is_exit_3(tmp_path, capsys):
    sock = str(tmp_path / "none.sock")
    assert cli.main(["train", "--socket", sock, "--out", str(tmp_path / "m.json")]) == 3
    assert sock in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--horizon", "0"], ["--epochs", "0"], ["--lr", "-1"]])
def test_bad_training_arguments_are_usage_errors(tmp_path, args):
    with pytest.raises(SystemExit) as ei:
        cli.main(["train", "--ledger", str(tmp_path / "x"), "--out", str(tmp_path / "m.json"), *args])
    assert ei.value.code == 2
