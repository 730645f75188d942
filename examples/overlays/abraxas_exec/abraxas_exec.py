"""abraxas_exec: abraxas plus an exec capability for ASCEND.

`apply` writes the payload's text to a file in its working area ($HOME: the
private scratch directory aal-core gives each call) and reports its hash:
the kind of side effect ASCEND exists for and CLEAR forbids.
"""
import hashlib
import json
import os
import sys


def main():
    req = json.load(sys.stdin)
    payload = req.get("payload") or {}
    text = payload.get("text", "") if isinstance(payload, dict) else str(payload)
    cap = req["capability"]
    if cap == "scan":
        words = text.split()
        out = {"words": len(words), "distinct": len({w.lower() for w in words})}
    elif cap == "apply":
        path = os.path.join(os.environ.get("HOME", "."), "applied.txt")
        with open(path, "w") as fh:
            fh.write(text)
        out = {"written": len(text.encode()), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    else:
        print(f"abraxas_exec: no capability {cap!r}", file=sys.stderr)
        return 2
    out["phase"] = req["phase"]
    json.dump(out, sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
