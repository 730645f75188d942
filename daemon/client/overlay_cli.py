"""`aalctl overlay ...` and `aalctl provenance ...`: the overlay bus from a shell.

    aalctl overlay list | get NAME | install PATH [--disabled] | enable NAME
                   | disable NAME | remove NAME | rescan
    aalctl overlay invoke NAME CAPABILITY PHASE [PAYLOAD_JSON] [--profile P] [--seed S]
    aalctl overlay replay RUN_ID        re-run a recorded call (exit 0 match, 1 mismatch)
    aalctl provenance get RUN_ID | list [--overlay NAME] [--limit N] | verify

Replay (also TOOLS/replay.py N, by line): the stored payload (dev mode only:
overlays.log_payload or AAL_DEV_LOG_PAYLOAD=1) is checked against the
record's payload_hash, the call is made again with the same phase,
capability, profile and seed, a changed manifest is warned about, and for a
deterministic overlay the new result_hash is compared with the recorded one.
Exit codes: 0 match (or not compared: the overlay is not deterministic),
1 mismatch (or the stored payload does not match its hash), 2 refused
(no payload stored, no such record) or usage, 3 cannot connect, 4 RPC error.
"""
from __future__ import annotations

import json
import sys

from ..ledger.canonical import canonical

EXIT_MATCH, EXIT_MISMATCH, EXIT_REFUSED = 0, 1, 2


def add_parser(sub) -> None:
    o = sub.add_parser("overlay", help="list, install, enable, invoke and replay overlays")
    osub = o.add_subparsers(dest="overlay_command", required=True)
    osub.add_parser("list", help="every overlay in overlays.dir")
    for name, what in (("get", "one overlay"), ("enable", "enable an overlay"),
                       ("disable", "disable an overlay"), ("remove", "remove an installed overlay")):
        osub.add_parser(name, help=what).add_argument("name")
    i = osub.add_parser("install", help="install the overlay directory PATH (holds manifest.json)")
    i.add_argument("path")
    i.add_argument("--disabled", action="store_true", help="install without enabling it")
    osub.add_parser("rescan", help="re-read overlays.dir now (hot swap)")
    v = osub.add_parser("invoke", help="call a capability in a phase")
    v.add_argument("name")
    v.add_argument("capability")
    v.add_argument("phase")
    v.add_argument("payload", nargs="?", default="{}", help="JSON (default {})")
    v.add_argument("--profile")
    v.add_argument("--seed")
    r = osub.add_parser("replay", help="re-run a recorded call; exit 0 on a match, 1 on a mismatch")
    r.add_argument("run_id")
    p = sub.add_parser("provenance", help="the provenance log of overlay calls")
    psub = p.add_subparsers(dest="provenance_command", required=True)
    psub.add_parser("get", help="the record of RUN_ID").add_argument("run_id")
    ls = psub.add_parser("list", help="records in log order")
    ls.add_argument("--overlay")
    ls.add_argument("--limit", type=int, default=20)
    psub.add_parser("verify", help="check every record against the ledger (exit 1 if one is bad)")


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _seed(text):
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def run_overlay(args, client) -> int:
    cmd = args.overlay_command
    if cmd == "list":
        res = client.call("overlay.list")
        for o in res["overlays"]:
            state = ("enabled" if o["enabled"] else "disabled") + ("" if o["valid"] else ", BROKEN")
            print(f"{o['name']:24} {o.get('version', '-'):12} {state}")
            for prob in o.get("problems", []):
                print(f"    {prob}")
        return 0
    if cmd in ("get", "enable", "disable", "remove"):
        _print(client.call(f"overlay.{cmd}", {"name": args.name}))
        return 0
    if cmd == "install":
        _print(client.call("overlay.install", {"path": args.path, "enable": not args.disabled}))
        return 0
    if cmd == "rescan":
        _print(client.call("overlay.rescan"))
        return 0
    if cmd == "invoke":
        try:
            payload = json.loads(args.payload)
        except ValueError as exc:
            print(f"aalctl: the payload is not JSON: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        params = {"overlay": args.name, "capability": args.capability, "phase": args.phase, "payload": payload}
        if args.profile:
            params["profile"] = args.profile
        if args.seed is not None:
            params["seed"] = _seed(args.seed)
        res = client.call("overlay.invoke", params)
        _print(res)
        return 0 if res["ok"] else 1
    if cmd == "replay":
        return replay_cmd(client, run_id=args.run_id)
    raise AssertionError(cmd)


def run_provenance(args, client) -> int:
    cmd = args.provenance_command
    if cmd == "get":
        _print(client.call("provenance.get", {"run_id": args.run_id}))
        return 0
    if cmd == "list":
        params = {"limit": args.limit}
        if args.overlay:
            params["overlay"] = args.overlay
        for rec in client.call("provenance.list", params)["records"]:
            print(json.dumps(rec, sort_keys=True, separators=(",", ":")))
        return 0
    if cmd == "verify":
        res = client.call("provenance.verify")
        if res["ok"]:
            print(f"provenance: {res['records']} record(s), every one anchored in the ledger: ok")
            return 0
        bad = res["first_bad"]
        print(f"provenance: NOT valid: record {bad['seq']} (run_id {bad.get('run_id') or '?'}): {bad['reason']}")
        return 1
    raise AssertionError(cmd)


EXIT_RPC_REPLAY = 4


def replay_cmd(client, **kw) -> int:
    """replay() with an RPC error (no such record, overlay gone) as exit 2/4, not 1 (mismatch)."""
    from . import RpcCallError
    from .. import errors as E
    try:
        return replay(client, **kw)
    except RpcCallError as exc:
        print(f"replay: error: {exc.message} ({exc.code})", file=sys.stderr)
        return EXIT_REFUSED if exc.code == E.NOT_FOUND else EXIT_RPC_REPLAY


def _sha(value) -> str:
    import hashlib
    return hashlib.sha256(canonical(value)).hexdigest()


def replay(client, *, run_id: str | None = None, index: int | None = None, out=sys.stdout, err=sys.stderr) -> int:
    """Re-run a recorded call; see the module docstring for the exit codes."""
    params = {"run_id": run_id} if run_id is not None else {"index": index}
    got = client.call("provenance.get", params)
    rec = got["record"]
    label = f"record {got['index']} (run_id {rec['run_id'][:16]}…)"
    if "payload" not in rec:
        print(f"replay refused: {label} has no stored payload (only its hash); record calls with "
              f"overlays.log_payload = true or AAL_DEV_LOG_PAYLOAD=1 to replay them", file=err)
        return EXIT_REFUSED
    if _sha(rec["payload"]) != rec["payload_hash"]:
        print(f"replay: MISMATCH before running: the stored payload of {label} does not match its "
              f"payload_hash (the record was edited)", file=err)
        return EXIT_MISMATCH
    info = client.call("overlay.get", {"name": rec["overlay"]})
    if info.get("manifest_hash") != rec["manifest_hash"]:
        print(f"replay: warning: the manifest of {rec['overlay']} changed since the call "
              f"(version {rec['version']} -> {info.get('version', '?')}); the result may differ", file=err)
    params = {"overlay": rec["overlay"], "capability": rec["capability"], "phase": rec["phase"],
              "payload": rec["payload"], "profile": rec["profile"]}
    if "seed" in rec:
        params["seed"] = rec["seed"]
    res = client.call("overlay.invoke", params)
    same = res["result_hash"] == rec["result_hash"]
    summary = {"run_id": rec["run_id"], "replayed_as": res["run_id"], "provenance_index": res["provenance_index"],
               "recorded_result_hash": rec["result_hash"], "result_hash": res["result_hash"],
               "recorded_outcome": rec["outcome"], "ok": res["ok"]}
    if not rec.get("deterministic"):
        summary["verdict"] = "not compared (the overlay is not deterministic)"
        print(json.dumps(summary, indent=2, sort_keys=True), file=out)
        return EXIT_MATCH
    summary["verdict"] = "match" if same else "mismatch"
    print(json.dumps(summary, indent=2, sort_keys=True), file=out)
    return EXIT_MATCH if same else EXIT_MISMATCH
