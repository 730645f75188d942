#!/usr/bin/env python3
"""Verify an aal-core ledger file offline (same code as `aalctl ledger verify`).

    TOOLS/verify_ledger.py FILE [--json] [--mark M]
        exit 0 ok, 1 damaged at or below the high-water mark, 2 unreadable,
        3 torn tail beyond the mark (cut off at start)
"""
import argparse
import sys

from aal_core.ledger import cli


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="verify_ledger", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command")
    cli.add_parser(sub)
    args = p.parse_args(["ledger", "verify"] + list(sys.argv[1:] if argv is None else argv))
    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
