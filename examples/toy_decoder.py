"""A toy decoder generating tokens with the governed KV cache.

    .venv/bin/python examples/toy_decoder.py --socket .aal-core-local/aal-core.sock \\
        --profile BALANCED --seconds 30

It registers with aal-core (subscribe, then job.submit), generates tokens for
a few sequences with a small random-weight decoder whose keys and values go
into `aal_core.client.kv.KVCache`, and between steps applies every directive
the daemon pushed (shrinking the cache, truncating context, offloading),
acknowledges it, and prints what it did.  Without --socket it runs ungoverned
(the baseline the bench compares against).

--kv-mib-per-s paces generation so the cache grows at that rate (the bench's
ramp); --max-kv-mib is the cache's own capacity (KV[CAP] x memory total by
default).  --report FILE writes a JSON summary at exit.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import psutil
import torch

from aal_core.client import ConnectError, RpcCallError
from aal_core.client.kv import KVCache
from aal_core.client.workload import GovernedJob
from aal_core.errors import ParseError
from aal_core.runes import resolve


class ToyDecoder:
    """Embedding, one K/V projection shared by all layers (scaled per layer),
    attention over the last `window` cached tokens, argmax next token."""

    def __init__(self, n_layers=32, n_heads=8, head_dim=128, vocab=512, window=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        d = n_heads * head_dim
        self.L, self.H, self.D, self.window = n_layers, n_heads, head_dim, window
        self.embed = torch.randn(vocab, d, generator=g) * 0.1
        self.w_kv = torch.randn(d, 2 * d, generator=g) / d ** 0.5
        self.w_q = torch.randn(d, d, generator=g) / d ** 0.5
        self.w_out = torch.randn(d, vocab, generator=g) / d ** 0.5
        self.layer_scale = torch.linspace(0.5, 1.5, n_layers).view(n_layers, 1, 1, 1)

    @torch.no_grad()
    def step(self, cache: KVCache, seq_ids: list[str], tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed[tokens]                                   # (B, d)
        kv = (h @ self.w_kv).view(len(seq_ids), 2, self.H, self.D)
        q = (h @ self.w_q).view(len(seq_ids), self.H, self.D)
        nxt = []
        for i, sid in enumerate(seq_ids):
            per_layer = (kv[i].unsqueeze(0) * self.layer_scale).to(torch.float16)   # (L, 2, H, D)
            cache.append(sid, per_layer)
            k, v = cache.get(sid, last=self.window)              # (L, H, T, D)
            att = torch.softmax((k[-1].float() @ q[i].unsqueeze(-1)).squeeze(-1) / self.D ** 0.5, dim=-1)
            out = (att.unsqueeze(-1) * v[-1].float()).sum(1).reshape(-1)
            nxt.append(int(torch.argmax(out @ self.w_out)))
        return torch.tensor(nxt)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--socket", help="aal-core socket; omit to run ungoverned")
    ap.add_argument("--job-id", default=f"toy-{os.getpid()}")
    ap.add_argument("--profile", default="BALANCED", help="built-in name or rune text")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--sequences", type=int, default=4)
    ap.add_argument("--kv-mib-per-s", type=float, default=0.0, help="pace growth (0: as fast as it goes)")
    ap.add_argument("--max-kv-mib", type=float, default=0.0, help="cache capacity (0: KV[CAP] x memory)")
    ap.add_argument("--pid", action="store_true", help="give the daemon our pid (cgroup with the caps)")
    ap.add_argument("--report", help="write a JSON summary here at exit")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--progress", action="store_true",
                    help="print 'progress tokens=N' every 0.25 s (what the bench reads if we get killed)")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)           # tiny matmuls: threads only add contention
    try:
        _, profile = resolve(args.profile)
    except ParseError as exc:
        ap.error(f"--profile: {exc}")
    model = ToyDecoder()
    cache = KVCache.from_profile(profile, n_layers=model.L, n_heads=model.H,
                                 head_dim=model.D, block_tokens=16,
                                 capacity_bytes=int(args.max_kv_mib * (1 << 20)) or None)
    proc = psutil.Process()
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    stats = {"tokens": 0, "directives": [], "peak_rss": 0, "peak_kv": 0, "governed": bool(args.socket)}

    job = None
    if args.socket:
        try:
            job = GovernedJob(args.job_id, args.profile, metadata={"model": "toy-decoder"},
                              pid=os.getpid() if args.pid else None, socket_path=args.socket)
            info = job.start()
        except (ConnectError, RpcCallError) as exc:
            print(f"toy_decoder: cannot register with aal-core: {exc}", file=sys.stderr)
            if job is not None:
                job.close(release=False)
            cache.close()
            return 1
        cache.apply(info["metadata"])
        say(f"registered {args.job_id}: priority {info['priority']}, threshold {info['threshold']}, "
            f"enforced={info['enforced']} ({info.get('enforce_reason') or info.get('cgroup')})")

    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *a: stop.update(now=True))
    token_bytes = cache.block_bytes // cache.block_tokens
    seq_ids = [f"seq{i}" for i in range(args.sequences)]
    tokens = torch.zeros(len(seq_ids), dtype=torch.long)
    t0 = time.monotonic()
    next_progress = t0
    try:
        while not stop["now"] and time.monotonic() - t0 < args.seconds:
            if job is not None:
                for d in job.pending():
                    got = time.monotonic()
                    res = cache.apply(d)
                    ack = job.ack(d)
                    stats["directives"].append({
                        "version": d["version"], "kind": d["kind"],
                        "steps": [s["order"] for s in d["steps"]], "stress": d["cause"]["stress"],
                        "signal": d["cause"].get("signal"),
                        "apply_s": round(time.monotonic() - got, 6), "latency_s": ack.get("latency_s"),
                        "freed_mib": round(res["freed_bytes"] / (1 << 20), 1), "t": round(got - t0, 3)})
                    say(f"[{got - t0:6.2f}s] directive v{d['version']} {d['kind']} "
                        f"{','.join(s['action'] + str(s['args']) for s in d['steps']) or '-'}: "
                        f"freed {res['freed_bytes'] / (1 << 20):.1f} MiB, cache cap "
                        f"{res['capacity_bytes'] / (1 << 20):.0f} MiB, context {res['max_context_tokens']}, "
                        f"offload {res['offload_tier']}; acked in {ack.get('latency_s')} s "
                        f"({d['cause']['reason']})")
            tokens = model.step(cache, seq_ids, tokens)
            stats["tokens"] += len(seq_ids)
            if stats["tokens"] % 64 < len(seq_ids):
                rss = proc.memory_info().rss
                stats["peak_rss"] = max(stats["peak_rss"], rss)
            stats["peak_kv"] = max(stats["peak_kv"], cache.used_bytes())
            if args.progress and time.monotonic() >= next_progress:
                next_progress += 0.25
                print(f"progress tokens={stats['tokens']} kv_mib={cache.used_bytes() >> 20}", flush=True)
            if args.kv_mib_per_s > 0:
                due = t0 + stats["tokens"] * token_bytes / (args.kv_mib_per_s * (1 << 20))
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
    finally:
        stats["seconds"] = round(time.monotonic() - t0, 3)
        stats["kv_final"] = cache.used_bytes()
        stats["cache"] = cache.stats
        if job is not None:
            job.close()
        cache.close()
        if args.report:
            with open(args.report, "w") as fh:
                json.dump(stats, fh)
    say(f"generated {stats['tokens']} tokens in {stats['seconds']} s; peak KV "
        f"{stats['peak_kv'] / (1 << 20):.0f} MiB, peak RSS {stats['peak_rss'] / (1 << 20):.0f} MiB, "
        f"{len(stats['directives'])} directives")
    return 0


if __name__ == "__main__":
    sys.exit(main())
