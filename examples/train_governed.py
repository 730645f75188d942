"""A small real training loop governed by aal-core (CPU PyTorch, synthetic data).

    python examples/train_governed.py --socket /run/aal-core/aal-core.sock --run-id mlp-1
    python examples/train_governed.py                  # the same run, ungoverned

The model is a stack of wide residual MLP blocks (64 -> 4096 -> 64, each an
nn.Sequential), so its activations, and hence its memory, scale with the
micro-batch while its compute stays small.  The data is a fixed random
regression problem drawn from --seed.  Everything aal-core asks for is done
through aal_core.client.train.GovernedTraining at the safe point between
optimizer steps; the loop itself is plain PyTorch.

--report FILE writes {final_loss, losses, steps, applied, checkpoints,
paused_s, wall_s, peak_rss_bytes} as JSON at the end.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import sys
import time


def _return_freed_memory_to_the_kernel() -> None:
    """glibc keeps freed blocks below its (self-raising) mmap threshold in
    its heap; fixing the threshold at 64 KiB makes every activation tensor
    an mmap of its own, unmapped when freed, so a smaller micro-batch is a
    smaller resident set at once."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)       # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def build(args):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d))

        def forward(self, x):
            return x + self.body(x)

    torch.manual_seed(args.seed)
    d = 64
    model = nn.Sequential(*[Block(d, args.hidden) for _ in range(args.blocks)], nn.Linear(d, 1))
    g = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.samples, d, generator=g)
    w = torch.randn(d, 1, generator=g) / d ** 0.5
    y = torch.tanh(x @ w) + 0.1 * torch.sin(3 * x[:, :1])
    return model, x, y


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--socket", help="aal-core's socket; without it the run is ungoverned")
    p.add_argument("--run-id", default="train-governed")
    p.add_argument("--profile", help="rune text or a built-in profile name for the run's job")
    p.add_argument("--cgroup-pid", action="store_true", help="give the daemon our pid (a cgroup of our own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--micro-batch", type=int, default=512)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--report-every", type=int, default=1)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--report", help="write the run's summary here (JSON)")
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep after each step")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true", help="a line per step on stdout")
    args = p.parse_args(argv)

    _return_freed_memory_to_the_kernel()
    import torch
    from aal_core.client.train import GovernedTraining

    torch.set_num_threads(args.threads)
    model, x, y = build(args)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = torch.nn.MSELoss()
    gov = GovernedTraining(args.run_id, model, opt, dataset_size=args.samples, micro_batch=args.micro_batch,
                           grad_accum=args.grad_accum, checkpoint_dir=args.checkpoint_dir, seed=args.seed,
                           report_every=args.report_every, socket_path=args.socket, profile=args.profile,
                           pid=os.getpid() if args.cgroup_pid else None, experiment="train_governed",
                           connect=args.socket is not None)
    if gov.channel is not None and not gov.channel.wait_connected(10):
        print(f"train_governed: no daemon on {args.socket} yet; training on ({gov.channel.errors[-1:]})",
              file=sys.stderr)
    t0 = time.monotonic()
    losses = []
    for epoch in range(args.epochs):
        for micro_batches in gov.steps(epoch):
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for idx in micro_batches:
                loss = loss_fn(model(x[idx]), y[idx])
                gov.backward(loss, len(idx))
                total += loss.item() * len(idx)
            opt.step()
            losses.append(total / gov.effective_batch)
            gov.step_done(losses[-1])
            if args.progress:
                print(f"step {gov.global_step} loss {losses[-1]:.6f} micro {gov.micro_batch} accum {gov.grad_accum}"
                      f" ckpt {int(gov.checkpointing)}", flush=True)
            if args.step_sleep:
                time.sleep(args.step_sleep)
        print(f"epoch {epoch}: loss {losses[-1]:.6f} micro-batch {gov.micro_batch} x {gov.grad_accum}"
              f"{' ckpt' if gov.checkpointing else ''}", flush=True)
    with torch.no_grad():
        final = loss_fn(model(x), y).item()
    wall = time.monotonic() - t0
    gov.close()
    out = {"final_loss": final, "losses": losses, "steps": gov.global_step, "applied": gov.applied,
           "checkpoints": gov.checkpoints, "paused_s": gov.paused_s, "wall_s": wall,
           "rejected": dict(gov.channel.rejected) if gov.channel else {},
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    print(f"final loss {final:.6f} after {gov.global_step} steps in {wall:.1f} s; "
          f"{len(gov.applied)} commands applied", flush=True)
    if args.report:
        tmp = args.report + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(out, fh)
        os.replace(tmp, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
