"""Every interval and timeout in the daemon runs on the monotonic clock: a
wall-clock jump must neither speed up nor stall a loop.  Wall time is read
in one place only (aal_core.clock.Clock.wall, for timestamps people see)."""
from __future__ import annotations

import ast
from pathlib import Path

DAEMON = Path(__file__).resolve().parents[1] / "daemon"
WALL = {("time", "time"), ("time", "time_ns"), ("datetime", "now"), ("datetime", "utcnow"),
        ("datetime", "today"), ("date", "today")}


def wall_clock_reads(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and (node.func.value.id, node.func.attr) in WALL:
            lines.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module == "time" \
                and any(a.name in ("time", "time_ns") for a in node.names):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_scanner_finds_wall_clock_reads():
    src = "import time, datetime\nt = time.time()\nfrom time import time_ns\nd = datetime.now()\nm = time.monotonic()\n"
    assert wall_clock_reads(ast.parse(src)) == [2, 3, 4]


def test_only_clock_wall_reads_the_wall_clock():
    found = {}
    for path in sorted(DAEMON.rglob("*.py")):
        rel = path.relative_to(DAEMON).as_posix()
        if rel.startswith("v1/"):
            continue                          # generated protobuf bindings
        lines = wall_clock_reads(ast.parse(path.read_text(), str(path)))
        if lines:
            found[rel] = lines
    assert set(found) == {"clock.py"}, found
    assert len(found["clock.py"]) == 1
