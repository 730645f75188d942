"""A client that connects the moment the socket file appears is answered by
started units: the daemon binds, starts its units, and only then serves."""
import os
import shutil
import signal
import subprocess
import time

from aal_core.client import Client

from helpers import AAL_CORE, short_tmpdir, without_systemd_env


def test_first_connection_sees_started_units():
    for _ in range(3):      # the window it guards was a few ms wide: try it more than once
        base = short_tmpdir()
        sock = os.path.join(base, "aal-core.sock")
        proc = subprocess.Popen([AAL_CORE, "run", "--local", base, "--tegrastats", "off"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=without_systemd_env())
        try:
            deadline = time.monotonic() + 20
            while not os.path.exists(sock):
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.0005)
            with Client(sock) as c:
                st = c.call("venom.status")
                assert "actions" in st and st.get("reason") is None, st
                assert c.call("ledger.manifest")["chain_length"] >= 1
                assert c.call("stress.get")["band"] in ("LOW", "MODERATE", "HIGH", "CRITICAL")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
            shutil.rmtree(base, ignore_errors=True)
