"""What the KV cache's EXTENDED tier saves and what it costs in accuracy.

    .venv/bin/python bench/kv.py [--blocks 64] [--head-dim 128]

On a Jetson there is no CXL or other memory tier: EXTENDED keeps the block
in the same process's RAM, quantised to int8 with one float32 scale per
head_dim vector (aal_core.client.kv.quantize_int8).  This measures, on fp16
K/V blocks shaped like a decoder's (n_layers, 2, n_heads, block_tokens,
head_dim), with Gaussian values plus rare large outliers (as real K
activations have in a few channels):

  bytes      EXTENDED bytes / fp16 bytes (the memory it saves)
  error      max |x - x'| / max|x| per vector (bound: 1/254 = 0.00394 for
             the int8 grid, plus 2^-11 for rounding the result to fp16),
             relative RMS error over all values
  time       ns per value to quantise and to restore, against a floor
             (a plain fp16 copy) in the same run

Peers, same data: the per-block scale EXTENDED used before (one absmax for
the whole block: an outlier coarsens every value), and lossless zlib level 1
on the fp16 bytes (what "losslessly compressed in RAM" would give).
"""
from __future__ import annotations

import argparse
import sys
import time
import zlib

import torch

from aal_core.client.kv import dequantize_int8, quantize_int8


def make_blocks(n: int, L: int, H: int, T: int, D: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn((L, 2, H, T, D), generator=g)
        # a few outlier channels per head, ~20x the typical magnitude
        ch = torch.randint(0, D, (L, 2, H, 1, 2), generator=g)
        x.scatter_(-1, ch.expand(L, 2, H, T, 2), 20.0 * torch.randn((L, 2, H, T, 2), generator=g))
        out.append(x.to(torch.float16))
    return out


def per_block(x: torch.Tensor):
    xf = x.float()
    s = float(xf.abs().max()) / 127.0 or 1.0
    return (xf / s).round().clamp(-127, 127).to(torch.int8), s


def errors(xs, backs) -> tuple[float, float]:
    worst, num, den = 0.0, 0.0, 0.0
    for x, b in zip(xs, backs):
        xf, bf = x.float(), b.float()
        amax = xf.abs().amax(-1, keepdim=True).clamp_min(1e-12)
        worst = max(worst, float(((bf - xf).abs() / amax).max()))
        num += float((bf - xf).pow(2).sum())
        den += float(xf.pow(2).sum())
    return worst, (num / den) ** 0.5


def timed(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=64)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    L, H, T, D = args.layers, args.heads, args.tokens, args.head_dim
    xs = make_blocks(args.blocks, L, H, T, D)
    n_vals = sum(x.numel() for x in xs)
    fp16 = n_vals * 2

    vec = [quantize_int8(x) for x in xs]
    vec_bytes = sum(q.numel() + s.numel() * s.element_size() for q, s in vec)
    vec_back = [dequantize_int8(q, s, torch.float16) for q, s in vec]
    blk = [per_block(x) for x in xs]
    blk_bytes = sum(q.numel() + 4 for q, _ in blk)
    blk_back = [(q.float() * s).to(torch.float16) for q, s in blk]
    z = [zlib.compress(x.numpy().tobytes(), 1) for x in xs]
    z_bytes = sum(len(c) for c in z)

    t_floor = timed(lambda: [x.clone() for x in xs], args.reps)
    t_q = timed(lambda: [quantize_int8(x) for x in xs], args.reps)
    t_dq = timed(lambda: [dequantize_int8(q, s, torch.float16) for q, s in vec], args.reps)
    t_bq = timed(lambda: [per_block(x) for x in xs], args.reps)
    t_z = timed(lambda: [zlib.compress(x.numpy().tobytes(), 1) for x in xs], args.reps)
    t_zd = timed(lambda: [zlib.decompress(c) for c in z], args.reps)

    ns = lambda t: t / n_vals * 1e9  # noqa: E731
    e_vec, r_vec = errors(xs, vec_back)
    e_blk, r_blk = errors(xs, blk_back)
    print(f"bench/kv.py: {args.blocks} fp16 blocks of ({L}, 2, {H}, {T}, {D}) = {fp16 / 2**20:.1f} MiB, "
          f"Gaussian + 2 outlier channels per head; best of {args.reps}")
    print(f"{'scheme':34s} {'bytes/fp16':>10s} {'max err/absmax':>15s} {'rel RMS err':>12s} "
          f"{'in ns/val':>10s} {'x floor':>8s} {'out ns/val':>11s}")
    print(f"{'floor: fp16 copy':34s} {1.0:10.3f} {0.0:15.5f} {0.0:12.5f} {ns(t_floor):10.2f} {1.0:8.2f} {'-':>11s}")
    print(f"{'EXTENDED: int8, scale per vector':34s} {vec_bytes / fp16:10.3f} {e_vec:15.5f} {r_vec:12.5f} "
          f"{ns(t_q):10.2f} {t_q / t_floor:8.2f} {ns(t_dq):11.2f}")
    print(f"{'peer: int8, one scale per block':34s} {blk_bytes / fp16:10.3f} {e_blk:15.5f} {r_blk:12.5f} "
          f"{ns(t_bq):10.2f} {t_bq / t_floor:8.2f} {'-':>11s}")
    print(f"{'peer: zlib -1 (lossless)':34s} {z_bytes / fp16:10.3f} {0.0:15.5f} {0.0:12.5f} "
          f"{ns(t_z):10.2f} {t_z / t_floor:8.2f} {ns(t_zd):11.2f}")
    print(f"EXTENDED saves {1 - vec_bytes / fp16:.1%} of the fp16 bytes (lossless zlib: {1 - z_bytes / fp16:.1%}); "
          f"its error is {r_vec / r_blk:.2f}x the per-block scale's (rel RMS); max {e_vec:.5f} <= bound "
          f"1/254 + fp16 rounding 2^-11 = {1 / 254 + 2 ** -11:.5f}: "
          f"{'yes' if e_vec <= 1 / 254 + 2 ** -11 + 1e-6 else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
