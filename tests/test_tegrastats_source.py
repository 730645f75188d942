"""The tegrastats child, driven directly (no daemon): how a command is
resolved (off, replay, auto, missing), a command that is missing or cannot
be executed is absent and tried again with backoff until it can run (one
failure episode, not one per attempt), and a dying child is restarted with a
doubling, capped backoff that resets after healthy running."""
from __future__ import annotations

import asyncio
import os
import sys

import pytest

from aal_core.clock import Clock, ManualClock
from aal_core.sources import tegrastats as T


def test_resolve_off_and_replay():
    assert T.resolve("off", 1000) == (None, "off", "disabled (sense.tegrastats_command = off)")
    assert T.resolve("  ", 1000)[1] == "off"
    argv, mode, reason = T.resolve("replay", 250)
    assert argv == [sys.executable, T.REPLAY_SCRIPT, "--interval", "250"] and mode == "replay" and reason is None
    assert os.path.isfile(T.REPLAY_SCRIPT)


def test_resolve_auto_prefers_the_real_tool_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert T.resolve("auto", 1000)[1] == "replay"            # none on PATH: the bundled recording
    tool = tmp_path / "tegrastats"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    assert T.resolve("auto", 500) == ([str(tool), "--interval", "500"], "live", None)
    assert T.TegrastatsSource("auto", 500, ManualClock()).state()["path"] == f"{tool} --interval 500"


def test_resolve_missing_and_malformed_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    argv, mode, reason = T.resolve("tegrastats", 1000)
    assert argv is None and mode == "live" and reason.startswith("command not found: tegrastats")
    argv, _, reason = T.resolve("tegrastats 'unclosed", 1000)
    assert argv is None and "cannot parse sense.tegrastats_command" in reason


def _wait(cond, timeout=10.0):
    async def poll():
        while not cond():
            await asyncio.sleep(0.01)
    return asyncio.wait_for(poll(), timeout)


def test_missing_command_is_absent_then_found_when_it_appears(tmp_path, monkeypatch):
    """A tegrastats installed (or a script path created) after the daemon
    started is found by the retries: absent meanwhile, one episode."""
    monkeypatch.setenv("PATH", str(tmp_path))
    tool = tmp_path / "tegrastats"

    async def main():
        src = T.TegrastatsSource("tegrastats", 1000, Clock(), backoff_initial_s=0.01, backoff_max_s=0.05)
        await src.start()
        await _wait(lambda: src.health.attempts >= 3)
        absent = src.state()
        tool.write_text(f"#!{sys.executable}\nimport time\nprint('RAM 100/7620MB tj@50.5C', flush=True)\n"
                        "time.sleep(30)\n")
        tool.chmod(0o755)
        await _wait(lambda: src.parsed >= 1)
        up = src.state()
        await src.stop()
        return absent, up
    absent, up = asyncio.run(main())
    assert absent["present"] is False and absent["state"] == "absent" and absent["restarts"] == 0
    assert absent["reason"].startswith("command not found: tegrastats") and absent["last_error"] == absent["reason"]
    assert absent["attempts"] >= 3 and absent["episodes"] == 1 and absent["next_retry_s"] <= 0.05
    assert up["state"] == "ok" and up["present"] and up["episodes"] == 1 and up["attempts"] == 0
    assert up["pid"] > 0 and up["path"] == f"{tool} --interval 1000" and "reason" not in up


def test_a_command_that_cannot_be_executed_is_absent_and_retried(tmp_path):
    bad = tmp_path / "tegrastats"
    bad.write_bytes(b"\x7fELF garbage, not a program\n")      # executable bit, no valid format: ENOEXEC
    bad.chmod(0o755)

    async def main():
        src = T.TegrastatsSource(str(bad), 1000, ManualClock(), backoff_initial_s=0.0, backoff_max_s=0.0)
        await src.start()
        await _wait(lambda: src.health.attempts >= 3)
        st = src.state()
        await src.stop()
        return st
    st = asyncio.run(main())
    assert st["present"] is False and st["restarts"] == 0 and st["lines"] == 0
    assert st["state"] == "absent" and st["episodes"] == 1 and st["errors"] >= 4
    assert st["reason"].startswith(f"cannot run {bad}: ")


def test_an_unparseable_command_line_waits_for_a_reload():
    async def main():
        src = T.TegrastatsSource("tegrastats 'unclosed", 1000, ManualClock(), backoff_initial_s=0.0)
        await src.start()
        await asyncio.wait_for(src._task, 5)       # gave up by itself: only a reload can fix it
        st = src.state()
        await src.stop()
        return st
    st = asyncio.run(main())
    assert st["state"] == "absent" and "next_retry_s" not in st and st["episodes"] == 1
    assert "cannot parse sense.tegrastats_command" in st["reason"]


def run_until_restarts(n: int, monkeypatch, **kw) -> tuple[list[float], dict]:
    """A child that exits at once, restarted n times; the backoff delays asked for."""
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def record(d, *a, **k):
        delays.append(d)
        await real_sleep(0)

    monkeypatch.setattr(T.asyncio, "sleep", record)
    cmd = f"{sys.executable} -c 'import sys; print(\"RAM 1/2MB\"); sys.exit(3)'"

    async def main():
        src = T.TegrastatsSource(cmd, 1000, Clock(), **kw)
        await src.start()
        while src.restarts < n:
            await real_sleep(0.01)
        await src.stop()
        return src.state()
    st = asyncio.run(asyncio.wait_for(main(), 30))
    return delays[:n], st


def test_dying_child_backoff_doubles_up_to_the_cap(monkeypatch):
    delays, st = run_until_restarts(6, monkeypatch, backoff_initial_s=0.5, backoff_max_s=4.0,
                                    healthy_after_s=3600)
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert st["restarts"] >= 6 and st["parsed"] >= 6 and st["errors"] == st["restarts"]
    # each run printed a good line, then died: one episode per death, bounded by the backoff
    assert st["episodes"] == st["restarts"]


def test_backoff_resets_after_healthy_running(monkeypatch):
    delays, _ = run_until_restarts(4, monkeypatch, backoff_initial_s=0.5, backoff_max_s=4.0, healthy_after_s=0.0)
    assert delays == [0.5, 0.5, 0.5, 0.5]


def test_state_reports_last_read_reads_and_errors():
    clock = ManualClock()
    src = T.TegrastatsSource("off", 1000, clock)
    assert "last_read" not in src.state()
    src.handle_line(b"RAM 1/2MB (lfb 1x4MB) tj@40C")
    src.handle_line(b"not tegrastats")
    clock.advance(1.5)
    st = src.state()
    assert (st["reads"], st["errors"], st["lines"], st["unparseable"]) == (1, 1, 2, 1)
    assert st["last_read"] == round(clock.wall() - 1.5, 3) and st["age_s"] == 1.5


@pytest.mark.parametrize("line", [b"", b"\xff" * 100, b"RAM x/yMB"])
def test_a_bad_line_never_raises_out_of_the_source(line):
    src = T.TegrastatsSource("off", 1000, ManualClock())
    assert src.handle_line(line) is None and src.unparseable == 1 and src.latest is None
