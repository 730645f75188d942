#!/usr/bin/env python3
"""A stand-in for `tegrastats` on machines that have none: prints recorded
lines, one per --interval, in a loop (or --count lines, then exits).

    tegrastats_replay.py [--interval MS] [--file FILE] [--count N]

The daemon runs it exactly as it runs the real tool (child process, lines on
stdout), so the whole pipeline can be seen live; system.status reports the
source's mode as "replay".
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = os.path.join(HERE, "tegrastats-orin-jp6.txt")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tegrastats_replay")
    p.add_argument("--interval", type=int, default=1000, help="milliseconds between lines")
    p.add_argument("--file", default=DEFAULT, help="recording: one tegrastats line per line, '#' comments")
    p.add_argument("--count", type=int, default=0, help="exit after this many lines (0: forever)")
    a = p.parse_args(argv)
    with open(a.file, "rb") as fh:
        lines = [ln.rstrip(b"\r\n") for ln in fh if ln.strip() and not ln.startswith(b"#")]
    if not lines:
        print(f"tegrastats_replay: no lines in {a.file}", file=sys.stderr)
        return 1
    out = sys.stdout.buffer
    n = 0
    while True:
        for ln in lines:
            out.write(ln + b"\n")
            out.flush()
            n += 1
            if a.count and n >= a.count:
                return 0
            time.sleep(max(a.interval, 1) / 1000.0)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(0)
