"""abraxas: a deterministic text analyser, run by aal-core as a proc overlay.

Reads one JSON request on stdin ({phase, capability, payload, degradation,
run_id}) and writes one JSON object on stdout.  It knows nothing of
aal-core beyond that; it honours degradation.max_context_tokens by
analysing only that many words.
"""
import hashlib
import json
import sys


def words_of(payload, degradation):
    text = payload.get("text", "") if isinstance(payload, dict) else str(payload)
    words = text.split()
    limit = degradation.get("max_context_tokens")
    if isinstance(limit, int) and limit > 0:
        words = words[:limit]
    return words


def scan(words, phase):
    counts = {}
    for w in words:
        w = w.lower().strip(".,;:!?\"'()")
        if w:
            counts[w] = counts.get(w, 0) + 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    return {"words": len(words), "distinct": len(counts), "top": [[w, n] for w, n in top]}


def align(words, phase):
    return {"aligned": [w.lower() for w in words][:32], "length": len(words)}


def seal(words, phase):
    digest = hashlib.sha256(" ".join(words).encode()).hexdigest()
    return {"seal": digest, "words": len(words)}


CAPS = {"scan": scan, "align": align, "seal": seal}


def main():
    req = json.load(sys.stdin)
    fn = CAPS.get(req["capability"])
    if fn is None:
        print(f"abraxas: no capability {req['capability']!r}", file=sys.stderr)
        return 2
    words = words_of(req.get("payload") or {}, req.get("degradation") or {})
    out = fn(words, req["phase"])
    out["phase"] = req["phase"]
    json.dump(out, sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
