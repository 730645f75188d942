"""Logs: one line per event, key=value, on stderr - the daemon's own events,
other libraries' records, thread crashes and an unexpected failure alike."""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys

from helpers import wait_for

_VALUE = r'(?:"(?:[^"\\\n]|\\.)*"|[^\s"=]+)'
_PAIR = re.compile(r'([a-z_][a-z0-9_.]*)=(' + _VALUE + r')(?: |$)')
_HEAD = re.compile(r'^(?:ts=\S+ )?level=(?:debug|info|warning|error) logger=\S+ event=')


def parse_line(line: str) -> dict:
    """The fields of one log line; AssertionError if it is not key=value all through."""
    assert _HEAD.match(line), line
    out, pos = {}, 0
    while pos < len(line):
        m = _PAIR.match(line, pos)
        assert m, f"not key=value at column {pos}: {line!r}"
        raw = m.group(2)
        if raw.startswith('"'):
            raw = re.sub(r'\\(.)', lambda e: {"n": "\n", "r": "\r"}.get(e.group(1), e.group(1)), raw[1:-1])
        out[m.group(1)] = raw
        pos = m.end()
    return out


def parse_log(text: str) -> list[dict]:
    assert text.endswith("\n"), text[-200:]
    return [parse_line(line) for line in text.splitlines()]


def test_every_line_of_a_daemon_run_is_one_key_value_event(daemon):
    with daemon.client() as c:
        c.call("system.health")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(daemon.socket)
    s.sendall(b"x" * (1 << 20) + b"y\n")           # over rpc.max_frame_bytes: logged
    s.settimeout(5)
    assert b"-32002" in s.recv(4096)
    s.close()
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "event=reloaded" in daemon.log(), what="reloaded")
    assert daemon.stop() == 0
    events = parse_log(daemon.log())
    names = [e["event"] for e in events]
    for want in ("local_mode", "listening", "ready", "frame_too_large", "reloaded", "stopping", "stopped"):
        assert want in names, names
    toobig = next(e for e in events if e["event"] == "frame_too_large")
    assert toobig["limit"] == str(1 << 20) and toobig["level"] == "warning"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})


def test_values_are_quoted_and_other_libraries_records_keep_the_grammar():
    r = _run(
        "import logging, threading, warnings\n"
        "from aal_core import log\n"
        "log.setup('info')\n"
        "log.get_logger('t').info('ev', plain='abc', spaced='a b', eq='k=v', nl='one\\r\\ntwo', q='say \"hi\"', empty='')\n"
        "try:\n"
        "    raise ValueError('bad\\nvalue')\n"
        "except ValueError:\n"
        "    logging.getLogger('asyncio').error('Task exception was never retrieved\\nfuture: <Task>', exc_info=True)\n"
        "logging.getLogger('asyncio').info('below warning: dropped')\n"
        "warnings.warn('old\\nthing')\n"
        "t = threading.Thread(target=lambda: 1 / 0, name='worker'); t.start(); t.join()\n")
    assert r.returncode == 0, r.stderr
    events = parse_log(r.stderr)
    assert len(events) == 4, r.stderr
    ev, foreign, warned, crashed = events
    ev.pop("ts")
    assert ev == {"level": "info", "logger": "t", "event": "ev", "plain": "abc", "spaced": "a b",
                  "eq": "k=v", "nl": "one\r\ntwo", "q": 'say "hi"', "empty": ""}
    assert foreign["logger"] == "asyncio" and foreign["event"] == "log" and foreign["level"] == "error"
    assert foreign["message"] == "Task exception was never retrieved\nfuture: <Task>"
    assert "ValueError: bad\nvalue" in foreign["traceback"]
    assert warned["logger"] == "py.warnings" and "UserWarning: old\nthing" in warned["message"]
    assert crashed["event"] == "thread_crash" and crashed["thread"] == "worker"
    assert "ZeroDivisionError" in crashed["error"] and "ZeroDivisionError" in crashed["traceback"]


def test_an_unexpected_failure_is_one_line_and_exit_1(tmp_path):
    # A bug anywhere under app.run (here: an injected one) must not spill a
    # bare multi-line traceback: one event=crash line, exit code 1.
    r = _run(
        "import sys\n"
        "from aal_core import app, __main__ as cli\n"
        "def boom(*a, **k):\n"
        "    raise RuntimeError('injected\\nbug')\n"
        "app.run = boom\n"
        f"sys.exit(cli.main(['run', '--local', {str(tmp_path)!r}, '--tegrastats', 'off']))\n")
    assert r.returncode == 1, r.stderr
    events = parse_log(r.stderr)
    crash = events[-1]
    assert crash["event"] == "crash" and crash["level"] == "error"
    assert crash["error"] == "RuntimeError('injected\\nbug')"
    assert "RuntimeError: injected\nbug" in crash["traceback"]
