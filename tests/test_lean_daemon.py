"""The daemon is lean on the board it protects (README "Performance"): a
running daemon, every unit started, has imported none of the heavy client-
or export-side modules (numpy, torch, prometheus_client, redis,
cryptography; pynvml only where an NVIDIA driver library loads)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from helpers import cleanup, short_tmpdir, start_daemon, without_systemd_env

HEAVY = ("numpy", "torch", "prometheus_client", "redis", "cryptography")
# Native libraries of those that have one, as /proc/<pid>/maps names them.
HEAVY_SO = ("numpy/_core", "numpy/core", "libtorch", "cryptography/hazmat/bindings")

# Runs the real `aal-core run` in-process; once it is ready, SIGTERM to
# itself; after the graceful stop, the heavy modules it had imported.
IN_PROCESS = r"""
import os, signal, sys, threading, time, socket, json
base = sys.argv[1]
sock = os.path.join(base, "aal-core.sock")
def stop_when_ready():
    for _ in range(400):
        try:
            s = socket.socket(socket.AF_UNIX); s.connect(sock)
            s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"system.status"}\n'); s.recv(1 << 16); s.close()
            time.sleep(0.5)
            break
        except OSError:
            time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=stop_when_ready, daemon=True).start()
from aal_core.__main__ import main
rc = main(["run", "--local", base, "--tegrastats", "replay", "--log-level", "warning"])
print(json.dumps({"rc": rc, "heavy": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY),
                  "pynvml": "pynvml" in sys.modules}))
"""


def _nvml_library_loads() -> bool:
    import ctypes
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        return True
    except OSError:
        return False


def test_running_daemon_maps_no_heavy_native_library():
    d = start_daemon(tegrastats="replay")
    try:
        d.call("system.status")
        maps = open(f"/proc/{d.proc.pid}/maps").read()
        found = [so for so in HEAVY_SO if so in maps]
        assert not found, f"the daemon mapped {found}"
    finally:
        cleanup(d)


def test_daemon_imports_no_heavy_module():
    import json
    base = short_tmpdir()
    try:
        code = f"HEAVY = {HEAVY!r}\n" + IN_PROCESS
        out = subprocess.run([sys.executable, "-c", code, base], capture_output=True, text=True, timeout=120,
                             env=without_systemd_env())
        assert out.returncode == 0, out.stderr[-3000:]
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert res["rc"] == 0, out.stderr[-3000:]
        assert res["heavy"] == [], res
        if not _nvml_library_loads():
            assert res["pynvml"] is False
    finally:
        shutil.rmtree(base, ignore_errors=True)
