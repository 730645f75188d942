"""`aalctl ledger ...`: work on a ledger file offline, without the daemon.

    aalctl ledger verify FILE [--json] [--mark M]    every hash, link and the Merkle root,
                                                     against the high-water mark (FILE.mark)
    aalctl ledger prove FILE INDEX [--tree-size N]   inclusion proof (JSON, as ledger.proof)
    aalctl ledger prove FILE --consistency FIRST [--tree-size N]
                                                     consistency proof (JSON, as ledger.consistency)
    aalctl ledger check PROOF [--root HEX] [--entry-hash HEX] [--first-root HEX]
                                                     check a proof JSON (file or - for stdin)
    aalctl ledger show FILE [--start I] [--end J]    entries as JSON lines

The file is only read (never locked, never repaired), so it is safe to run
against the live daemon's ledger.  Exit codes: 0 valid / done, 1 the ledger
or proof is not valid (verify: damaged at or below the high-water mark, the
daemon refuses to start on it), 2 usage error or unreadable file, 3 (verify)
a torn write beyond the mark: the daemon cuts it off at start, nothing
acknowledged is lost.
"""
from __future__ import annotations

import json
import mmap
import os
import sys

from ..errors import LedgerError
from .. import ledger_core as _core
from .chain import Ledger, examine
from .mark import mark_path, read_mark
from .proofs import check_consistency, check_proof

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_TORN = 0, 1, 2, 3


def add_parser(sub) -> None:
    """Add `ledger` and its subcommands to aalctl's subparsers."""
    p = sub.add_parser("ledger", help="verify a ledger file and make or check proofs, offline")
    lsub = p.add_subparsers(dest="ledger_command", required=True)
    v = lsub.add_parser("verify", help="recompute every hash, link and the Merkle root of FILE")
    v.add_argument("file")
    v.add_argument("--json", action="store_true", help="print the result as JSON (as ledger.verify)")
    v.add_argument("--mark", help="the high-water mark file (default: FILE.mark)")
    pr = lsub.add_parser("prove", help="inclusion proof of entry INDEX, or a consistency proof")
    pr.add_argument("file")
    pr.add_argument("index", nargs="?", type=int)
    pr.add_argument("--tree-size", type=int, help="tree size (default: the whole chain)")
    pr.add_argument("--consistency", type=int, metavar="FIRST",
                    help="prove the first FIRST entries are a prefix of the first --tree-size")
    c = lsub.add_parser("check", help="check a proof JSON from ledger.proof / ledger.consistency / prove")
    c.add_argument("proof", help="file with the proof JSON, or - for stdin")
    c.add_argument("--root", help="trusted root (inclusion) or second root (consistency)")
    c.add_argument("--first-root", help="trusted first root (consistency)")
    c.add_argument("--entry-hash", help="trusted entry hash (inclusion)")
    s = lsub.add_parser("show", help="print entries as JSON lines")
    s.add_argument("file")
    s.add_argument("--start", type=int, default=0)
    s.add_argument("--end", type=int, help="exclusive (default: the end)")


def verify_file(path: str, mark_file: str | None = None) -> dict:
    """ledger.verify's result for a file, judged against its high-water mark
    as the daemon's start judges it: `verdict` "ok", "torn" (beyond the mark:
    the start cuts `torn_bytes` off) or "damaged" (the start refuses)."""
    mpath = mark_file or mark_path(path)
    mark_error = ""
    try:   # the mark first: it only moves after the data it covers is durable
        mark = read_mark(mpath)
    except LedgerError as exc:
        mark, mark_error = None, str(exc)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        if mark is None and not mark_error:
            raise
        return {"valid": False, "verdict": "damaged", "chain_length": 0, "bytes": 0, "seconds": 0.0,
                "merkle_root": _core.MerkleTree().root().hex(), "first_bad_index": 0, "mark_file": mpath,
                "mark": mark.as_dict() if mark else None,
                "reason": mark_error or f"the ledger file is missing, but its high-water mark says "
                                        f"{mark.entries} entries were acknowledged"}
    with fh:
        size = os.fstat(fh.fileno()).st_size
        mm = mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ) if size else None
        tree = _core.MerkleTree()
        try:
            res, _, v = examine(mm if mm is not None else b"", tree, mark)
        finally:
            if mm is not None:
                mm.close()
    out = {"valid": v.kind == "ok" and not mark_error, "verdict": "damaged" if mark_error else v.kind,
           "chain_length": res.count, "seconds": round(res.seconds, 6), "merkle_root": tree.root().hex(),
           "bytes": size, "mark_file": mpath, "mark": mark.as_dict() if mark else None}
    if mark_error:
        out["first_bad_index"], out["reason"] = None, mark_error
    elif v.kind == "damaged":
        out["first_bad_index"], out["reason"] = v.index, v.reason
        out["byte_offset"] = v.byte if v.byte is not None else res.end
    elif v.kind == "torn":
        out["first_bad_index"], out["reason"] = res.count, v.reason
        out["byte_offset"] = res.end
        out["torn_bytes"] = size - res.end
    if v.adopt and not mark_error:
        out["mark_adopt"] = v.adopt
    return out


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def cmd_verify(args) -> int:
    out = verify_file(args.file, args.mark)
    mark = out["mark"]
    under = (f"; high-water mark {mark['entries']} entries, {mark['bytes']} bytes" if mark
             else "; no high-water mark yet (the ledger predates it, or holds only its genesis entry): "
                  "the daemon writes one at start" if out.get("mark_adopt") else "")
    if args.json:
        _print_json(out)
    elif out["verdict"] == "ok":
        print(f"ok: {out['chain_length']} entries, merkle root {out['merkle_root']}{under} "
              f"({out['seconds']:.3f}s)")
    elif out["verdict"] == "torn":
        print(f"TORN TAIL beyond the high-water mark: {out['torn_bytes']} bytes after entry "
              f"{out['chain_length'] - 1} ({out['reason']}; entry {out['first_bad_index']} was being "
              f"written and never acknowledged: aal-core cuts it off at start). The "
              f"{out['chain_length']} entries before it verify, merkle root {out['merkle_root']}{under}")
    else:
        where = (f" at or below the high-water mark: entry {out['first_bad_index']} (byte "
                 f"{out['byte_offset']})" if out.get("first_bad_index") is not None else "")
        print(f"DAMAGED{where}: {out['reason']}. "
              f"aal-core refuses to start on it (exit 4). {out['chain_length']} entries verify{under}.")
    return {"ok": EXIT_OK, "torn": EXIT_TORN}.get(out["verdict"], EXIT_INVALID)


def cmd_prove(args) -> int:
    os.stat(args.file)
    led = Ledger.open(args.file, create=False, repair_torn_tail=False, use_mark=False)
    try:
        if args.consistency is not None:
            out = led.consistency(args.consistency, args.tree_size)
            ok = check_consistency(out)
        else:
            if args.index is None:
                raise SystemExit("aalctl ledger prove: give INDEX or --consistency FIRST")
            out = led.proof(args.index, args.tree_size)
            ok = check_proof(out)
    finally:
        led.close()
    if not ok:  # the tree disagrees with its own proof: a bug, not bad input
        print("aalctl: internal error: the proof does not verify", file=sys.stderr)
        return EXIT_INVALID
    _print_json(out)
    return EXIT_OK


def cmd_check(args) -> int:
    try:
        text = sys.stdin.read() if args.proof == "-" else open(args.proof).read()
        proof = json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"aalctl: cannot read the proof: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not isinstance(proof, dict):
        print("aalctl: a proof is a JSON object", file=sys.stderr)
        return EXIT_USAGE
    if "first" in proof:
        ok = check_consistency(proof, args.first_root, args.root)
        what = f"consistency {proof.get('first')} -> {proof.get('second')}"
    else:
        ok = check_proof(proof, args.entry_hash, args.root)
        what = f"inclusion of entry {proof.get('index')} in tree size {proof.get('tree_size')}"
    print(f"{'valid' if ok else 'NOT VALID'}: {what}")
    return EXIT_OK if ok else EXIT_INVALID


def cmd_show(args) -> int:
    os.stat(args.file)
    led = Ledger.open(args.file, create=False, repair_torn_tail=False, use_mark=False)
    try:
        end = led.count if args.end is None else min(args.end, led.count)
        for a in range(args.start, end, 1000):
            for e in led.entries(a, min(a + 1000, end)):
                print(json.dumps(e, ensure_ascii=False, separators=(",", ":")), flush=False)
    finally:
        led.close()
    return EXIT_OK


COMMANDS = {"verify": cmd_verify, "prove": cmd_prove, "check": cmd_check, "show": cmd_show}


def run(args) -> int:
    """Entry point from aalctl: dispatch `aalctl ledger <command>`."""
    try:
        return COMMANDS[args.ledger_command](args)
    except FileNotFoundError as exc:
        print(f"aalctl: no such file: {exc.filename}", file=sys.stderr)
        return EXIT_USAGE
    except PermissionError as exc:
        print(f"aalctl: cannot read {exc.filename}: permission denied", file=sys.stderr)
        return EXIT_USAGE
    except LedgerError as exc:
        where = f" (index {exc.index})" if exc.index is not None else ""
        print(f"aalctl: {exc}{where}", file=sys.stderr)
        return EXIT_INVALID
