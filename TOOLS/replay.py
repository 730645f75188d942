#!/usr/bin/env python3
"""Replay the overlay call recorded on line N of the provenance log (0-based,
the provenance_index overlay.invoke returned), as `aalctl overlay replay
RUN_ID` does by run_id: the stored payload is checked against its hash, the
call is made again through the daemon, and for a deterministic overlay the
new result_hash is compared with the recorded one.

    TOOLS/replay.py N [--socket PATH]

Exit codes: 0 match (or not compared: not deterministic), 1 mismatch,
2 refused (no payload stored: dev mode was off; no line N) or usage,
3 cannot connect, 4 another RPC error.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="replay.py", description=__doc__.split("\n\n")[0])
    p.add_argument("n", type=int, help="line of the provenance log (0-based)")
    p.add_argument("--socket", default=None)
    args = p.parse_args(argv)
    if args.n < 0:
        print("replay.py: N must be >= 0", file=sys.stderr)
        return 2
    from aal_core.client import Client, ConnectError
    from aal_core.client.overlay_cli import replay_cmd
    try:
        with Client(args.socket, timeout=None) as c:
            return replay_cmd(c, index=args.n)
    except (ConnectError, OSError) as exc:
        print(f"replay.py: cannot connect to aal-core: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
