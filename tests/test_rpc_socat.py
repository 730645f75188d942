"""The framing works by hand: socat, a program that knows nothing of
aal-core, sends one line and gets one line back (README, "Framing")."""
import json
import subprocess


def test_socat_round_trip(daemon):
    req = b'{"jsonrpc":"2.0","id":1,"method":"system.health"}\n' \
          b'{"jsonrpc":"2.0","id":2,"method":"no.such"}\n'
    out = subprocess.run(["socat", "-t", "2", "-", f"UNIX-CONNECT:{daemon.socket}"],
                         input=req, capture_output=True, timeout=20, check=True).stdout
    lines = out.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3          # two frames, each newline-terminated
    first, second = (json.loads(x) for x in lines[:2])
    assert first["id"] == 1 and first["result"]["ok"] is True
    assert second["id"] == 2 and second["error"]["code"] == -32601
