"""`aalctl ledger ...`: work on a ledger file offline, without the daemon.

    aalctl ledger verify FILE [--json]               every hash, link and the Merkle root
    aalctl ledger prove FILE INDEX [--tree-size N]   inclusion proof (JSON, as ledger.proof)
    aalctl ledger prove FILE --consistency FIRST [--tree-size N]
                                                     consistency proof (JSON, as ledger.consistency)
    aalctl ledger check PROOF [--root HEX] [--entry-hash HEX] [--first-root HEX]
                                                     check a proof JSON (file or - for stdin)
    aalctl ledger show FILE [--start I] [--end J]    entries as JSON lines

The file is only read (never locked, never repaired), so it is safe to run
against the live daemon's ledger.  Exit codes: 0 valid / done, 1 the ledger
or proof is not valid, 2 usage error or unreadable file.
"""
from __future__ import annotations

import json
import mmap
import os
import sys

from ..errors import LedgerError
from .chain import Ledger, verify_bytes
from .proofs import check_consistency, check_proof

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def add_parser(sub) -> None:
    """Add `ledger` and its subcommands to aalctl's subparsers."""
    p = sub.add_parser("ledger", help="verify a ledger file and make or check proofs, offline")
    lsub = p.add_subparsers(dest="ledger_command", required=True)
    v = lsub.add_parser("verify", help="recompute every hash, link and the Merkle root of FILE")
    v.add_argument("file")
    v.add_argument("--json", action="store_true", help="print the result as JSON (as ledger.verify)")
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


def verify_file(path: str) -> dict:
    """ledger.verify's result for a file, plus the torn-tail size if any."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        mm = mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ) if size else None
        try:
            res, out = verify_bytes(mm if mm is not None else b"")
        finally:
            if mm is not None:
                mm.close()
    out["bytes"] = size
    if res.status != "ok":
        out["byte_offset"] = res.end
    if res.status == "torn":
        out["torn_bytes"] = res.torn_bytes
    return out


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def cmd_verify(args) -> int:
    out = verify_file(args.file)
    if args.json:
        _print_json(out)
    elif out["valid"]:
        print(f"ok: {out['chain_length']} entries, merkle root {out['merkle_root']} "
              f"({out['seconds']:.3f}s)")
    elif "torn_bytes" in out:
        print(f"NOT VALID: torn last record: {out['torn_bytes']} bytes after entry "
              f"{out['chain_length'] - 1} (entry {out['first_bad_index']} was being written; "
              f"aal-core cuts it off at start). The {out['chain_length']} entries before it verify, "
              f"merkle root {out['merkle_root']}")
    else:
        print(f"NOT VALID: entry {out['first_bad_index']} (byte {out['byte_offset']}): {out['reason']}. "
              f"Entries 0..{out['chain_length'] - 1} verify.")
    return EXIT_OK if out["valid"] else EXIT_INVALID


def cmd_prove(args) -> int:
    os.stat(args.file)
    led = Ledger.open(args.file, create=False, repair_torn_tail=False)
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
    led = Ledger.open(args.file, create=False, repair_torn_tail=False)
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
