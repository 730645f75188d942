#!/usr/bin/env python3
"""Ledger benchmark: every number next to its floor and its peer, in one run.

    .venv/bin/python bench/ledger.py            full (1M-entry tree and verify; ~1-2 min)
    .venv/bin/python bench/ledger.py --quick    smaller sizes (~15 s)

Sections:
1. appends/s in memory: aal_core.ledger (canonical JSON + compiled SHA3 +
   incremental Merkle) vs the floor (hashlib.sha3_256 alone over the same
   preimage bytes) vs the peer (json.dumps(sort_keys) + hashlib chain, the
   usual hand-rolled Python ledger, with no Merkle tree at all);
2. durable appends/s (write + fsync) in the state directory's filesystem:
   group commit with 64 concurrent appenders vs one fsync per append;
3. Merkle root cost per append at 10k/100k/1M entries: incremental vs a naive
   full rebuild (compiled too) vs the pure-Python reference's incremental;
4. verify time per million entries: compiled scan (on every CPU, and on
   one) vs a pure-Python check (hashlib + link parse) of the same bytes;
5. inclusion/consistency proof generation and verification, compiled vs the
   pure-Python reference, in microseconds.

Not a test: nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import ssl
import sys
import tempfile
import time

from aal_core import ledger_core as core
from aal_core.clock import ManualClock
from aal_core.ledger import Ledger, _ref
from aal_core.ledger.chain import scan_bytes
from aal_core.ledger.commit import GroupCommitter


def best(fn, repeat=3):
    """Best wall time of `repeat` runs of fn() (seconds)."""
    out = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def row(label, value, unit, *ratios):
    extra = "  ".join(f"{name} {r:6.2f}x" for name, r in ratios)
    print(f"  {label:<46} {value:>12,.1f} {unit:<10} {extra}")


def sample(i: int) -> dict:
    # A decision-sized entry, like the control loop writes.
    return {"type": "APPLY_BALANCE", "beat": i, "vector": [0.1, 0.25, 0.05, 0.35 + i * 1e-6],
            "genome": {"R": 0.25, "B": 0.25, "E": 0.15, "O": 0.35}, "stress": 0.612, "band": "HIGH"}


def bench_memory(n: int):
    print(f"\n1. appends per second, in memory ({n:,} entries of ~200 bytes)")
    datas = [sample(i) for i in range(n)]

    def ours():
        led = Ledger.memory(clock=ManualClock())
        for d in datas:
            led.append(d)
        return led

    led = ours()
    t_ours = best(ours, 2)
    # The same preimage bytes, hashed by hashlib alone (the floor).
    pres = []
    blob = led.store.contents()
    for i in range(1, led.count):
        a = led.offsets[i]
        ln = int.from_bytes(blob[a:a + 4], "little")
        pres.append(blob[a + 8:a + 8 + ln])
    h = hashlib.sha3_256
    t_floor = best(lambda: [h(p).digest() for p in pres])

    def peer():
        prev = "0" * 64
        chain = []
        for i, d in enumerate(datas):
            body = {"index": i + 1, "timestamp": 1.7e9, "data": d, "previous_hash": prev}
            prev = h(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
            chain.append(prev)
    t_peer = best(peer, 2)

    def ours_root():
        led = Ledger.memory(clock=ManualClock())
        for d in datas:
            led.append(d)
            led.root()
    t_root = best(ours_root, 2)
    row("aal_core.ledger (canonical + SHA3 + Merkle)", n / t_ours, "appends/s",
        ("vs floor", t_floor / t_ours), ("vs peer", t_peer / t_ours))
    row("  the same + the Merkle root after each", n / t_root, "appends/s",
        ("vs floor", t_floor / t_root), ("vs peer", t_peer / t_root))
    row("floor: hashlib.sha3_256 of the same bytes", n / t_floor, "hashes/s")
    row("peer: json.dumps + hashlib chain, no Merkle", n / t_peer, "appends/s")
    print(f"  goal (issue 13): >= 1.00x the peer: {t_peer / t_ours:.2f}x "
          f"({t_peer / t_root:.2f}x with the root after each append) "
          f"{'MET' if t_peer / t_root >= 1.0 else 'NOT MET'}")


def bench_durable(seconds: float):
    d = tempfile.mkdtemp(prefix="aal-bench-ledger-", dir=os.environ.get("AAL_BENCH_DIR"))
    print(f"\n2. durable appends per second (write + fsync, in {d})")

    async def run(group: bool, concurrency: int):
        path = os.path.join(d, f"g{int(group)}c{concurrency}.aal")
        led = Ledger.open(path)
        gc = GroupCommitter(led, group=group, max_batch=1024)
        done = 0
        stop = time.perf_counter() + seconds

        async def worker(w):
            nonlocal done
            i = 0
            while time.perf_counter() < stop:
                await gc.submit(sample(i))
                done += 1
                i += 1

        t = time.perf_counter()
        await asyncio.gather(*[worker(w) for w in range(concurrency)])
        dt = time.perf_counter() - t
        await gc.close()
        batches = gc.batches
        led.close()
        return done / dt, batches

    single, b1 = asyncio.run(run(False, 64))
    grouped, b2 = asyncio.run(run(True, 64))
    one, _ = asyncio.run(run(True, 1))
    row("group commit, 64 concurrent appenders", grouped, "appends/s",
        ("vs 1 fsync/append", grouped / single))
    print(f"  {'':<46} {'':>12} {'':<10} ({b2} fsyncs for the run)")
    row("one fsync per append, 64 concurrent", single, "appends/s")
    row("one appender at a time (latency bound)", one, "appends/s")
    import shutil
    shutil.rmtree(d, ignore_errors=True)


def bench_merkle(sizes, per: int):
    print(f"\n3. Merkle root cost per append (append + new root, mean of {per} appends)")
    for n in sizes:
        hashes = os.urandom(32 * (n + per))
        tree = core.MerkleTree()
        tree.extend(hashes[:32 * n])
        extra = [hashes[32 * (n + i):32 * (n + i + 1)] for i in range(per)]

        def incr():
            for e in extra:
                tree.append(e)
                tree.root()
        t_inc = (time.perf_counter(), incr(), time.perf_counter())
        t_inc = (t_inc[2] - t_inc[0]) / per
        reps = max(1, min(20, 200_000 // n))
        t_naive = best(lambda: [core.naive_root(hashes[:32 * n]) for _ in range(reps)], 1) / reps
        ref = _ref.MerkleTree()
        if n <= 100_000:
            ref.extend(hashes[:32 * n])

            def ref_incr():
                for e in extra[:200]:
                    ref.append(e)
                    ref.root()
            t_ref = best(ref_incr, 1) / 200
        else:
            t_ref = None
        ratios = [("vs naive rebuild", t_naive / t_inc)]
        if t_ref:
            ratios.append(("vs pure Python", t_ref / t_inc))
        row(f"incremental root at {n:,} entries", t_inc * 1e6, "us/append", *ratios)
        row(f"naive full rebuild at {n:,} entries (compiled)", t_naive * 1e6, "us/root")
    print(f"  tree memory: {tree.nbytes / tree.size:.0f} bytes per entry")


def build_ledger_blob(n: int) -> bytes:
    led = Ledger.memory(clock=ManualClock())
    step = 10_000
    i = 1
    while led.count < n:
        k = min(step, n - led.count)
        led.append_many([sample(i + j) for j in range(k)])
        i += k
    return led.store.contents()


def py_verify(blob: bytes, limit: int) -> int:
    """A straightforward pure-Python check of the same file: frame, hashlib,
    previous_hash link (what one would write without the compiled scanner)."""
    pos, prev, count = 8, "0" * 64, 0
    h = hashlib.sha3_256
    while pos < len(blob) and count < limit:
        ln = int.from_bytes(blob[pos:pos + 4], "little")
        pre = blob[pos + 8:pos + 8 + ln]
        digest = blob[pos + 8 + ln:pos + 8 + ln + 32]
        if h(pre).digest() != digest:
            raise ValueError(count)
        k = pre.rindex(b'"previous_hash":"') + 17
        if pre[k:k + 64].decode() != prev:
            raise ValueError(count)
        prev = digest.hex()
        count += 1
        pos += 8 + ln + 32
    return count


def bench_verify(n: int):
    print(f"\n4. verify ({n:,} entries; times scaled to one million)")
    t = time.perf_counter()
    blob = build_ledger_blob(n)
    build = time.perf_counter() - t
    res, _ = scan_bytes(blob, core.MerkleTree())
    assert res.status == "ok" and res.count == n, res
    threads = core.default_threads()
    t_scan = best(lambda: scan_bytes(blob, core.MerkleTree()), 3)
    t_one = best(lambda: core.scan(blob, 8, 0, bytes(32), core.MerkleTree(), True, 1), 3)
    t_nomerkle = best(lambda: scan_bytes(blob, None, want_offsets=False), 3)
    sub_n = max(1, n // 10)      # the pure-Python check runs on a tenth
    assert py_verify(blob, sub_n) == sub_n
    t_py = best(lambda: py_verify(blob, sub_n), 1)
    floor = hashlib.sha3_256
    scale = 1e6 / n
    t_floor = best(lambda: floor(blob).digest(), 3)
    t_py_m = t_py * 1e6 / sub_n
    row(f"compiled scan + Merkle rebuild, {threads} threads", t_scan * scale, "s/million",
        ("vs pure Python", t_py_m / (t_scan * scale)), ("floor/ours", t_floor / t_scan))
    row("compiled scan + Merkle rebuild, 1 thread", t_one * scale, "s/million",
        ("vs pure Python", t_py_m / (t_one * scale)), ("floor/ours", t_floor / t_one))
    row(f"compiled scan, chain only, {threads} threads", t_nomerkle * scale, "s/million",
        ("vs pure Python", t_py_m / (t_nomerkle * scale)))
    row("pure Python: hashlib + link check", t_py * 1e6 / sub_n, "s/million")
    row("floor: hashlib.sha3_256 over all bytes at once", t_floor * scale, "s/million")
    print(f"  ({len(blob) / n:.0f} bytes per entry on disk; building the {n:,}-entry ledger took {build:.1f}s"
          f" = {n / build:,.0f} appends/s batched)")


def bench_proofs(n: int, k: int = 2000):
    print(f"\n5. proofs in a tree of {n:,} entries (mean of {k})")
    hashes = os.urandom(32 * n)
    tree = core.MerkleTree()
    tree.extend(hashes)
    ref = _ref.MerkleTree()
    if n <= 200_000:
        ref.extend(hashes)
    rnd = random.Random(1)
    idx = [rnd.randrange(n) for _ in range(k)]
    root = tree.root()
    t_gen = best(lambda: [tree.inclusion_proof(i, n) for i in idx]) / k
    proofs = [tree.inclusion_proof(i, n) for i in idx]
    leaves = [hashes[32 * i:32 * i + 32] for i in idx]
    t_ver = best(lambda: [core.verify_inclusion(leaves[j], idx[j], n, proofs[j], root) for j in range(k)]) / k
    t_ver_ref = best(lambda: [_ref.verify_inclusion(leaves[j], idx[j], n, proofs[j], root) for j in range(k)], 1) / k
    firsts = [rnd.randrange(1, n) for _ in range(k)]
    t_cgen = best(lambda: [tree.consistency_proof(f, n) for f in firsts]) / k
    cps = [tree.consistency_proof(f, n) for f in firsts]
    froots = [tree.root(f) for f in firsts]
    t_cver = best(lambda: [core.verify_consistency(firsts[j], n, froots[j], root, cps[j]) for j in range(k)]) / k
    t_cver_ref = best(lambda: [_ref.verify_consistency(firsts[j], n, froots[j], root, cps[j]) for j in range(k)], 1) / k
    gen_ref = None
    if n <= 200_000:
        gen_ref = best(lambda: [ref.inclusion_proof(i, n) for i in idx[:200]], 1) / 200
    row("inclusion proof generation", t_gen * 1e6, "us",
        *([("vs pure Python", gen_ref / t_gen)] if gen_ref else []))
    row("inclusion proof verification", t_ver * 1e6, "us", ("vs pure Python", t_ver_ref / t_ver))
    row("consistency proof generation", t_cgen * 1e6, "us")
    row("consistency proof verification", t_cver * 1e6, "us", ("vs pure Python", t_cver_ref / t_cver))
    print(f"  (path length {len(proofs[0])} hashes)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (about 15 s)")
    p.add_argument("--durable-seconds", type=float, default=None)
    args = p.parse_args(argv)
    q = args.quick
    print(f"aal-core ledger benchmark  (python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"{'quick' if q else 'full'}; SHA3 from {core.openssl_version()}, hashlib from {ssl.OPENSSL_VERSION})")
    bench_memory(5_000 if q else 20_000)
    bench_durable(args.durable_seconds or (1.0 if q else 3.0))
    bench_merkle([10_000, 100_000] if q else [10_000, 100_000, 1_000_000], per=1000 if q else 5000)
    bench_verify(100_000 if q else 1_000_000)
    bench_proofs(100_000 if q else 1_000_000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
