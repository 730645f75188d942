"""The ledger inside the real daemon: RPC, bad params, kill -9 during a
stream of appends, a full disk, a damaged file at start, aalctl offline."""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time

import pytest

from aal_core.client import AsyncClient, RpcCallError
from aal_core.errors import INVALID_PARAMS, LEDGER_ERROR, NOT_FOUND
from aal_core.ledger import check_consistency, check_proof
from helpers import AAL_CORE, AALCTL, cleanup, short_tmpdir, start_daemon

# The control loop also writes to the ledger; keep it from interfering
# where a test counts bytes.
NO_VENOM = "[venom]\nenabled = false\n"


def ledger_path(d) -> str:
    return os.path.join(d.base, "state", "ledger.aal")


def test_rpc_round_trip(daemon):
    m0 = daemon.call("ledger.manifest")
    acks = [daemon.call("ledger.append", {"data": {"n": i, "txt": "grüße"}}) for i in range(5)]
    assert [a["index"] for a in acks] == sorted(a["index"] for a in acks)
    got = daemon.call("ledger.get", {"index": acks[2]["index"]})["entries"]
    assert got[0]["hash"] == acks[2]["hash"] and got[0]["data"] == {"n": 2, "txt": "grüße"}
    m = daemon.call("ledger.manifest")
    assert m["chain_length"] >= m0["chain_length"] + 5 and m["genesis_hash"] == m0["genesis_hash"]
    rng = daemon.call("ledger.get", {"start": 0, "end": m["chain_length"]})["entries"]
    assert [e["index"] for e in rng] == list(range(m["chain_length"]))
    assert all(b["previous_hash"] == a["hash"] for a, b in zip(rng, rng[1:]))
    p = daemon.call("ledger.proof", {"index": acks[1]["index"], "tree_size": m["chain_length"]})
    assert p["root"] == m["merkle_root"] and p["entry_hash"] == acks[1]["hash"] and check_proof(p)
    c = daemon.call("ledger.consistency", {"first": m0["chain_length"], "second": m["chain_length"]})
    assert c["first_root"] == m0["merkle_root"] and c["second_root"] == m["merkle_root"]
    assert check_consistency(c)
    v = daemon.call("ledger.verify")
    assert v["valid"] and v["chain_length"] >= m["chain_length"]


@pytest.mark.parametrize("method,params,code,words", [
    ("ledger.append", {}, INVALID_PARAMS, "data"),
    ("ledger.append", {"data": [1, 2]}, INVALID_PARAMS, "data"),
    ("ledger.append", {"data": {"x": 2 ** 60 + 1}}, INVALID_PARAMS, "2**53"),
    ("ledger.append", {"data": {"x": 1}, "extra": 1}, INVALID_PARAMS, "extra"),
    ("ledger.get", {}, INVALID_PARAMS, "index"),
    ("ledger.get", {"index": 0, "start": 0}, INVALID_PARAMS, "either"),
    ("ledger.get", {"index": 10 ** 6}, NOT_FOUND, "no entry"),
    ("ledger.get", {"start": 0, "end": 1001}, INVALID_PARAMS, "at most 1000"),
    ("ledger.get", {"start": 5, "end": 2}, INVALID_PARAMS, "before start"),
    ("ledger.get", {"start": 10 ** 6}, NOT_FOUND, "past the end"),
    ("ledger.get", {"index": -1}, INVALID_PARAMS, ">= 0"),
    ("ledger.proof", {"index": 0, "tree_size": 10 ** 6}, NOT_FOUND, "larger than the chain"),
    ("ledger.proof", {"index": 3, "tree_size": 2}, INVALID_PARAMS, "not below"),
    ("ledger.proof", {"index": 0, "tree_size": 0}, INVALID_PARAMS, "at least 1"),
    ("ledger.proof", {}, INVALID_PARAMS, "index"),
    ("ledger.consistency", {"first": 0}, INVALID_PARAMS, "first"),
    ("ledger.consistency", {"first": 3, "second": 2}, INVALID_PARAMS, "first"),
])
def test_bad_params_get_clear_errors_and_change_nothing(daemon, method, params, code, words):
    daemon.call("ledger.append", {"data": {"x": 1}})
    daemon.call("ledger.append", {"data": {"x": 2}})
    before = daemon.call("ledger.manifest")
    with pytest.raises(RpcCallError) as ei:
        daemon.call(method, params)
    assert ei.value.code == code
    assert words in ei.value.message
    after = daemon.call("ledger.manifest")
    assert after["latest_hash"] == before["latest_hash"] or after["chain_length"] > before["chain_length"]
    assert daemon.call("ledger.verify")["valid"]


def test_concurrent_appends_are_group_committed(daemon):
    async def main():
        async with AsyncClient(daemon.socket) as c:
            return await asyncio.gather(*[c.call("ledger.append", {"data": {"k": i}}) for i in range(300)])

    res = asyncio.run(main())
    idx = [r["index"] for r in res]
    assert len(set(idx)) == 300
    for r in res[::29]:
        e = daemon.call("ledger.get", {"index": r["index"]})["entries"][0]
        assert e["hash"] == r["hash"]
    assert daemon.call("ledger.verify")["valid"]


def _stream_until_killed(d, acked: list, stop_after: float):
    """Append from 8 concurrent callers; SIGKILL the daemon after stop_after s."""
    async def writer(c, w):
        n = 0
        while True:
            try:
                r = await c.call("ledger.append", {"data": {"w": w, "n": n}})
            except Exception:  # noqa: BLE001 - the daemon died mid-call: not acknowledged
                return
            acked.append((r["index"], r["hash"], w, n))
            n += 1

    async def main():
        clients = [await AsyncClient(d.socket).connect() for _ in range(8)]
        tasks = [asyncio.ensure_future(writer(c, w)) for w, c in enumerate(clients)]
        await asyncio.sleep(stop_after)
        d.proc.send_signal(signal.SIGKILL)
        await asyncio.wait(tasks, timeout=10)
        for c in clients:
            await c.close()

    asyncio.run(main())
    d.proc.wait(10)


@pytest.mark.slow
def test_kill_9_during_appends_loses_no_acknowledged_entry():
    base = short_tmpdir()
    rnd = random.Random(5)
    all_acked: list = []
    try:
        for it in range(20):
            d = start_daemon(base=base)
            assert d.call("ledger.verify")["valid"]
            acked: list = []
            _stream_until_killed(d, acked, rnd.uniform(0.05, 0.4))
            assert d.proc.returncode == -signal.SIGKILL
            all_acked.extend(acked)
            d = start_daemon(base=base)
            try:
                v = d.call("ledger.verify")
                assert v["valid"], v
                for index, digest, w, n in all_acked[-300:] + acked[:50]:
                    e = d.call("ledger.get", {"index": index})["entries"][0]
                    assert e["hash"] == digest and e["data"] == {"w": w, "n": n}, (it, index)
            finally:
                d.stop()
        assert len(all_acked) > 200
        # Every acknowledged append of every round, checked in one pass.
        d = start_daemon(base=base)
        try:
            m = d.call("ledger.manifest")
            hashes = {}
            for a in range(0, m["chain_length"], 1000):
                for e in d.call("ledger.get", {"start": a})["entries"]:
                    hashes[e["index"]] = e["hash"]
            assert all(hashes.get(i) == h for i, h, _, _ in all_acked)
        finally:
            d.stop()
    finally:
        import shutil
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.root
def test_full_disk_fails_appends_clearly_and_keeps_serving():
    base = short_tmpdir()
    state = os.path.join(base, "state")
    os.makedirs(state)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", state], check=True)
    d = None
    try:
        d = start_daemon("--state-dir", state, base=base, config=NO_VENOM)
        filler = os.path.join(state, "filler")
        with open(filler, "wb") as fh:
            fh.write(b"f" * 16384)
        acked, err = [], None
        for i in range(400):
            try:
                acked.append(d.call("ledger.append", {"data": {"i": i, "pad": "x" * 400}}))
            except RpcCallError as exc:
                err = exc
                break
        assert err is not None and acked, "the 64k tmpfs never filled"
        assert err.code == LEDGER_ERROR
        assert "no space left on device" in err.message
        # It keeps failing clearly, and everything before is intact and served.
        with pytest.raises(RpcCallError) as again:
            d.call("ledger.append", {"data": {"i": -1, "pad": "x" * 400}})
        assert again.value.code == LEDGER_ERROR
        assert d.call("system.health")["ok"]
        v = d.call("ledger.verify")
        assert v["valid"] and v["chain_length"] == len(acked) + 1
        for a in acked[::7]:
            assert d.call("ledger.get", {"index": a["index"]})["entries"][0]["hash"] == a["hash"]
        # Space freed: appends work again, chained onto the last acknowledged one.
        os.unlink(filler)
        r = d.call("ledger.append", {"data": {"after": "space freed"}})
        assert r["index"] == len(acked) + 1
        assert d.call("ledger.get", {"index": r["index"]})["entries"][0]["previous_hash"] == acked[-1]["hash"]
        acked.append(r)
        # A restart on the nearly full disk verifies the same chain.
        assert d.stop() == 0
        d = start_daemon("--state-dir", state, base=base, config=NO_VENOM)
        m = d.call("ledger.manifest")
        assert m["chain_length"] == len(acked) + 1 and m["latest_hash"] == acked[-1]["hash"]
    finally:
        if d is not None:
            d.stop()
        subprocess.run(["umount", state], check=False)
        import shutil
        shutil.rmtree(base, ignore_errors=True)


def test_damaged_ledger_stops_the_start_with_exit_4(tmp_path):
    base = short_tmpdir()
    try:
        d = start_daemon(base=base, config=NO_VENOM)
        for i in range(5):
            d.call("ledger.append", {"data": {"i": i}})
        assert d.stop() == 0
        path = ledger_path(d)
        blob = bytearray(open(path, "rb").read())
        # Flip a byte inside entry 3's data.
        pos = blob.index(b'{"data":{"i":2}') + 12
        blob[pos] ^= 1
        open(path, "wb").write(blob)
        proc = subprocess.run([AAL_CORE, "run", "--local", base, "--tegrastats", "off",
                               "--config", os.path.join(base, "aal-core.toml")],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 4, proc.stderr
        assert "damaged at entry 3" in proc.stderr and "hash mismatch" in proc.stderr
        assert open(path, "rb").read() == bytes(blob)     # not "repaired"
        out = subprocess.run([AALCTL, "ledger", "verify", path], capture_output=True, text=True)
        assert out.returncode == 1 and "entry 3" in out.stdout
    finally:
        import shutil
        shutil.rmtree(base, ignore_errors=True)


def test_aalctl_ledger_offline(daemon):
    for i in range(9):
        daemon.call("ledger.append", {"data": {"i": i}})
    m = daemon.call("ledger.manifest")
    path = ledger_path(daemon)
    out = subprocess.run([AALCTL, "ledger", "verify", "--json", path], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["valid"] and res["chain_length"] >= m["chain_length"]
    out = subprocess.run([AALCTL, "ledger", "prove", path, "3", "--tree-size", str(m["chain_length"])],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    proof = json.loads(out.stdout)
    assert proof == daemon.call("ledger.proof", {"index": 3, "tree_size": m["chain_length"]})
    chk = subprocess.run([AALCTL, "ledger", "check", "-", "--root", m["merkle_root"]],
                         input=out.stdout, capture_output=True, text=True)
    assert chk.returncode == 0 and chk.stdout.startswith("valid")
    bad = subprocess.run([AALCTL, "ledger", "check", "-", "--root", "00" * 32],
                         input=out.stdout, capture_output=True, text=True)
    assert bad.returncode == 1 and "NOT VALID" in bad.stdout
    out = subprocess.run([AALCTL, "ledger", "prove", path, "--consistency", "2", "--tree-size",
                          str(m["chain_length"])], capture_output=True, text=True)
    assert json.loads(out.stdout)["second_root"] == m["merkle_root"]
    out = subprocess.run([AALCTL, "ledger", "verify", "/nonexistent/ledger.aal"], capture_output=True, text=True)
    assert out.returncode == 2 and "no such file" in out.stderr
