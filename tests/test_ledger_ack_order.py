"""An append is acknowledged only after its fsync, and its high-water mark's
fdatasync, returned: seen in the daemon's own system calls.

kill -9 cannot show it (the page cache survives a killed process), so the
real daemon runs under `strace -f -y` and the trace is read in the order
strace saw the calls: for every acknowledged ledger.append, the write of
its record to the ledger file, then an fsync of that file that returned,
then an fdatasync of the mark file that returned, all come before the
write of the reply on the client's socket starts.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

import pytest

from aal_core.client import AsyncClient, Client
from helpers import AAL_CORE, short_tmpdir, without_systemd_env

TRACED = "fsync,fdatasync,pwrite64,pwritev,write,writev,sendto,sendmsg"
LINE = re.compile(r"^(\d+)\s+(?:(\w+)\((.*)|<\.\.\. (\w+) resumed>(.*))$")
RESULT = re.compile(r"\)\s+=\s+(-?\d+)")
FD = re.compile(r"^\d+<([^>]*)>")


@dataclass
class Call:
    name: str
    target: str          # what the first fd argument is (strace -y)
    args: str
    start: int           # trace line where it began
    end: int = -1        # trace line where it returned
    ret: int | None = None


def parse(trace: str) -> list[Call]:
    calls, pending = [], {}
    for no, line in enumerate(trace.splitlines()):
        m = LINE.match(line)
        if not m:
            continue
        pid = m.group(1)
        if m.group(2):                                 # a call begins (and maybe ends)
            name, rest = m.group(2), m.group(3)
            fd = FD.match(rest)
            c = Call(name, fd.group(1) if fd else "", rest, no)
            calls.append(c)
            if rest.endswith("<unfinished ...>"):
                pending[pid] = c
            else:
                c.end = no
                r = RESULT.search(rest[rest.rfind(")"):] if ")" in rest else "")
                c.ret = int(r.group(1)) if r else None
        else:                                          # <... name resumed>
            c = pending.pop(pid, None)
            if c is not None and c.name == m.group(4):
                c.args += m.group(5)
                c.end = no
                r = RESULT.search(m.group(5))
                c.ret = int(r.group(1)) if r else None
    return calls


def ack_order_violations(calls: list[Call], ledger: str, acked: set[int]) -> list[str]:
    """For each acknowledged index, what is missing before its reply (empty: none)."""
    mark = ledger + ".mark"
    record_written: dict[int, int] = {}
    replied: dict[int, int] = {}
    for c in calls:
        if c.name.startswith("pwrite") and c.target == ledger and c.ret is not None and c.ret > 0:
            for i in re.findall(r'\\"index\\":(\d+),\\"previous_hash', c.args):
                record_written.setdefault(int(i), c.end)
        if c.target.startswith("socket:") and c.name in ("write", "writev", "sendto", "sendmsg"):
            for i in re.findall(r'\\"result\\":\{\\"index\\":(\d+),\\"hash', c.args):
                replied.setdefault(int(i), c.start)
    fsyncs = [c for c in calls if c.name in ("fsync", "fdatasync") and c.target == ledger and c.ret == 0]
    marks = [c for c in calls if c.name in ("fsync", "fdatasync") and c.target == mark and c.ret == 0]
    bad = []
    for i in sorted(acked):
        if i not in replied:
            bad.append(f"{i}: no reply seen in the trace")
            continue
        if i not in record_written:
            bad.append(f"{i}: its record was never written to {ledger}")
            continue
        w, r = record_written[i], replied[i]
        synced = [f for f in fsyncs if f.start > w and f.end < r]
        if not synced:
            bad.append(f"{i}: replied (line {r}) before an fsync of the ledger returned after its write "
                       f"(line {w})")
            continue
        if not any(m.start > synced[0].end and m.end < r for m in marks):
            bad.append(f"{i}: replied (line {r}) before the high-water mark's fdatasync returned after "
                       f"the ledger's fsync (line {synced[0].end})")
    return bad


def stop_traced(proc: subprocess.Popen) -> None:
    """SIGTERM the daemon (strace's child; strace ignores a SIGTERM of its
    own while its tracee runs), then wait for strace to write out the trace."""
    try:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as fh:
            children = [int(p) for p in fh.read().split()]
    except OSError:
        children = []
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait(10)
        raise


def test_every_append_is_acknowledged_after_its_fsync_and_its_mark():
    if shutil.which("strace") is None:
        pytest.fail("strace is missing: TOOLS/setup.sh --test installs it")
    base = short_tmpdir()
    try:
        cfg = os.path.join(base, "aal-core.toml")
        with open(cfg, "w") as fh:
            fh.write("[venom]\nenabled = false\n")
        trace = os.path.join(base, "trace")
        sock = os.path.join(base, "aal-core.sock")
        proc = subprocess.Popen(["strace", "-f", "-y", "-s", "200000", "-o", trace, "-e", f"trace={TRACED}",
                                 AAL_CORE, "run", "--local", base, "--tegrastats", "off", "--config", cfg],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=without_systemd_env())
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, "the daemon under strace exited"
                try:
                    with Client(sock) as c:
                        c.call("system.health")
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    assert time.monotonic() < deadline, "the daemon under strace did not answer"
                    time.sleep(0.1)
            acked = set()
            with Client(sock) as c:      # one at a time: one batch each
                for i in range(15):
                    acked.add(c.call("ledger.append", {"data": {"one": i}})["index"])

            async def concurrent():      # many at once: group-committed batches
                async with AsyncClient(sock) as ac:
                    res = await asyncio.gather(*[ac.call("ledger.append", {"data": {"many": i}})
                                                 for i in range(60)])
                return {r["index"] for r in res}

            acked |= asyncio.run(concurrent())
        finally:
            stop_traced(proc)
        assert len(acked) == 75
        calls = parse(open(trace, errors="replace").read())
        ledger = os.path.join(base, "state", "ledger.aal")
        assert sum(c.name == "fsync" and c.target == ledger for c in calls) >= 15
        assert ack_order_violations(calls, ledger, acked) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)
