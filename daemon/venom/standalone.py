"""`aal-core venom`: the control loop on its own, with its own ledger file.

    aal-core venom --beats N [--k-flows K] [--p-nodes P] [--t1 S] [--t-threshold S]
                   [--ledger FILE] [--summary-interval S] [--proc-root DIR] [--model FILE]

N = -1 beats forever (until Ctrl-C / SIGTERM).  Without the daemon there is
no sensing unit and no governor: the anomalies counted are late beats and
OOM kills (the oom_kill counter of <proc-root>/vmstat), and actions that
need the governor are recorded as not applied.  At the end it prints the
loop's status and the ledger manifest's Merkle root (JSON on stdout).
Defaults are the seed's (T1 = 1 ms, a 4.2 ms beat), not the daemon's.
Exit codes: 0 done, 2 bad arguments or parameters (e.g. k·P ≤ 1),
4 the ledger file is unusable.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys

from ..clock import SYSTEM
from ..errors import LedgerError
from ..ledger import Ledger
from .engine import Settings, VenomLoop
from .entropy import EntropyParams, ModelError, load_model
from .genome import Genome
from .pulse import PulseError

EXIT_OK, EXIT_USAGE, EXIT_STATE = 0, 2, 4


def add_parser(sub):
    p = sub.add_parser("venom", help="run the control loop standalone with its own ledger file")
    p.add_argument("--beats", type=int, required=True, help="number of beats; -1 for endless")
    p.add_argument("--k-flows", type=int, default=4, help="k of T_Λ (default 4)")
    p.add_argument("--p-nodes", type=int, default=5, help="P of T_Λ (default 5)")
    p.add_argument("--t1", type=float, default=0.001, help="T1 of T_Λ in seconds (default 0.001: a 4.2 ms beat)")
    p.add_argument("--t-threshold", type=float, default=0.02, help="PID setpoint for T_Λ (default 0.02)")
    p.add_argument("--ledger", default="venom-ledger.aal", metavar="FILE",
                   help="ledger file, created if absent, appended to if present (default ./venom-ledger.aal)")
    p.add_argument("--summary-interval", type=float, default=60.0, metavar="S",
                   help="seconds of NOOP beats per summary entry (default 60)")
    p.add_argument("--evidence-window", type=float, default=10.0, metavar="S",
                   help="seconds of anomalies the model sees (default 10; README, venom)")
    p.add_argument("--proc-root", default="/proc", metavar="DIR", help="where vmstat is read (default /proc)")
    p.add_argument("--model", metavar="FILE", help="entropy model file (aal-core.entropy.v1)")
    p.add_argument("--runner", choices=["inline", "threads"], default="inline",
                   help="how the four cores run (default inline)")
    return p


class VmstatOom:
    """OOM kills since boot from <proc_root>/vmstat (the `oom_kill` line)."""

    def __init__(self, proc_root: str):
        self.path = os.path.join(proc_root, "vmstat")
        self.failures = 0

    def anomaly_counters(self) -> dict:
        try:
            with open(self.path, "rb") as fh:
                for line in fh:
                    if line.startswith(b"oom_kill "):
                        return {"oom_kills": int(line.split()[1]), "source_failures": self.failures}
        except (OSError, ValueError, IndexError):
            self.failures += 1
        return {"source_failures": self.failures}


async def _run(loop: VenomLoop, beats: int) -> None:
    task = asyncio.ensure_future(loop.run(beats))
    ev = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        ev.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass
    await loop.flush()


def cmd_venom(args) -> int:
    if args.beats < -1 or args.beats == 0:
        print("aal-core venom: --beats must be a positive number or -1 (endless)", file=sys.stderr)
        return EXIT_USAGE
    if not args.summary_interval > 0:
        print("aal-core venom: --summary-interval must be > 0", file=sys.stderr)
        return EXIT_USAGE
    if not (args.evidence_window > 0 and math.isfinite(args.evidence_window)):
        print("aal-core venom: --evidence-window must be a finite number of seconds > 0", file=sys.stderr)
        return EXIT_USAGE
    settings = Settings(t1=args.t1, k_flows=args.k_flows, p_nodes=args.p_nodes,
                        t_threshold=args.t_threshold, genome=Genome(),
                        summary_interval_s=args.summary_interval, runner=args.runner,
                        evidence_window_s=args.evidence_window)
    try:
        period = settings.period
        model = load_model(os.path.abspath(args.model)) if args.model else EntropyParams()
    except (PulseError, ModelError) as exc:
        print(f"aal-core venom: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        # The ledger is the loop's recorder as is: append, manifest, verified.
        recorder = Ledger.open(os.path.abspath(args.ledger))
    except (LedgerError, OSError) as exc:
        print(f"aal-core venom: ledger {args.ledger}: {exc}", file=sys.stderr)
        return EXIT_STATE
    print(f"aal-core venom: T_Λ = {period:.6g} s, {args.beats if args.beats > 0 else 'endless'} beats, "
          f"ledger {os.path.abspath(args.ledger)}", file=sys.stderr, flush=True)
    loop = VenomLoop(settings, SYSTEM, model=model, sensing=VmstatOom(args.proc_root), recorder=recorder)
    try:
        import uvloop
        uvloop.run(_run(loop, args.beats))
        status = loop.status()
        manifest = recorder.manifest()
    finally:
        loop.close()
        recorder.close()
    print(json.dumps({"status": status, "manifest": manifest, "merkle_root": manifest.get("merkle_root")},
                     indent=2, sort_keys=True))
    print(f"merkle_root {manifest.get('merkle_root')}", file=sys.stderr)
    return EXIT_OK
