"""The entropy model on the client side, in torch: train it, export it.

    model = EntropyModel()                      # Linear(1, 1), weight 0.12, bias 0, then σ
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = model.train_step(anoms, target, opt) # one MSE step
    model.export("/var/lib/aal-core/entropy.json")

`pairs_from_entries` turns ledger entries of the control loop into
(anomalies, outcome) pairs: outcome 1 when an OOM kill or a CRITICAL sample
followed within `horizon_s`, else 0.  The daemon loads the exported file with
`venom.set_model` and evaluates σ(w·x + b) without torch
(aal_core.venom.entropy); the two agree to 1e-6.

Command line (needs torch: pip install 'aal-core[client-torch]'):

    python -m aal_core.client.entropy train [--ledger FILE] [--socket PATH] --out FILE
        [--horizon 60] [--epochs 200] [--lr 0.05] [--set-model]

Entries come from --ledger FILE (read-only: safe beside the running daemon)
or else from the daemon at --socket (ledger.get); --set-model loads the
exported file into the daemon at --socket.  Exit codes: 0 trained, 1 no
pairs to train on, 2 bad arguments or an unreadable ledger, 3 the daemon
refused or could not be reached.
"""
from __future__ import annotations

import argparse
import bisect
import os
import sys

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("aal_core.client.entropy needs torch (client side only): "
                      "pip install 'aal-core[client-torch]'") from exc

from ..errors import LedgerError
from ..ledger import Ledger
from ..venom.entropy import ML_WEIGHT, ModelError, write_model
from . import Client, ConnectError, RpcCallError, default_socket

__all__ = ["EntropyModel", "pairs_from_entries", "train"]


class EntropyModel(nn.Module):
    """threat = σ(Linear(1, 1)(anomalies)), weight initialised to ml_weight, bias 0."""

    def __init__(self, ml_weight: float = ML_WEIGHT, bias: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.update_weight(ml_weight, bias)

    def forward(self, anoms: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(anoms))

    @staticmethod
    def _column(x) -> torch.Tensor:
        t = torch.as_tensor(x, dtype=torch.float32)
        return t.reshape(-1, 1)

    def threat(self, anoms) -> torch.Tensor:
        """Threat for one count or a sequence of counts (no gradient)."""
        with torch.no_grad():
            return self(self._column(anoms)).reshape(-1)

    def train_step(self, anoms, target, optimizer, sample_weight=None) -> float:
        """One optimisation step on the MSE between σ(w·anoms + b) and target; returns the loss."""
        x, y = self._column(anoms), self._column(target)
        optimizer.zero_grad()
        pred = self(x)
        if sample_weight is None:
            loss = nn.functional.mse_loss(pred, y)
        else:
            w = self._column(sample_weight)
            loss = (w * (pred - y) ** 2).sum() / w.sum()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def update_weight(self, ml_weight: float, bias: float | None = None) -> None:
        """Set the weight (the seed's ml_weight) and, if given, the bias."""
        with torch.no_grad():
            self.linear.weight.fill_(float(ml_weight))
            if bias is not None:
                self.linear.bias.fill_(float(bias))

    def parameters_exact(self) -> tuple[float, float]:
        """(weight, bias) as the float64 values of torch's float32 parameters."""
        return float(self.linear.weight.detach().reshape(())), float(self.linear.bias.detach().reshape(()))

    def export(self, path: str, **meta) -> str:
        """Write the aal-core.entropy.v1 file the daemon loads (atomically)."""
        w, b = self.parameters_exact()
        write_model(path, w, b, **meta)
        return path


# ------------------------------------------------------------------ data

def _events(data: dict) -> int:
    if data.get("type") == "venom.decision":
        a = data.get("anomalies", {})
    elif data.get("type") == "venom.summary":
        a, c = data.get("noop_anomalies", {}), data.get("coalesced_anomalies", {})
        return sum(int(x.get("oom_kills", 0)) + int(x.get("critical_samples", 0)) for x in (a, c))
    else:
        return 0
    return int(a.get("oom_kills", 0)) + int(a.get("critical_samples", 0))


def pairs_from_entries(entries, horizon_s: float = 60.0) -> list[tuple[float, float, int]]:
    """(anomalies, outcome, count) from ledger entries ({"timestamp", "data"}).

    A decision entry is one beat at its time, its feature the evidence the
    model saw (venom.evidence_window_s of anomaly units).  A summary entry stands for its
    NOOP beats, placed at the middle of its window, one pair per histogram
    bucket.  Outcome 1 when an OOM kill or a CRITICAL sample is recorded in
    (t, t + horizon_s]; beats closer than horizon_s to the last entry are
    left out (their outcome is not known yet)."""
    beats: list[tuple[float, float, int]] = []
    event_times: list[float] = []
    last_t = None
    for e in entries:
        data = e.get("data") if isinstance(e, dict) else None
        if not isinstance(data, dict):
            continue
        kind = data.get("type")
        if kind == "venom.decision":
            t = float(data.get("time", e.get("timestamp", 0.0)))
            # the model's input: the beat's sustained evidence (older entries: its anomaly total)
            ev = data.get("evidence")
            x = float(ev["value"]) if isinstance(ev, dict) and "value" in ev else float(data["anomalies"]["total"])
            beats.append((t, x, 1))
        elif kind == "venom.summary":
            t = float(data.get("time", e.get("timestamp", 0.0)))
            mid = t - float(data.get("window_s", 0.0)) / 2
            for k, n in data.get("noop_anomaly_hist", {}).items():
                beats.append((mid, float(k), int(n)))
        else:
            continue
        if _events(data):
            event_times.append(t)
        last_t = t if last_t is None else max(last_t, t)
    event_times.sort()
    out = []
    for t, anoms, n in beats:
        if last_t is None or t + horizon_s > last_t:
            continue
        i = bisect.bisect_right(event_times, t)
        hit = i < len(event_times) and event_times[i] <= t + horizon_s
        out.append((anoms, 1.0 if hit else 0.0, n))
    return out


def train(pairs, *, epochs: int = 200, lr: float = 0.05, model: EntropyModel | None = None,
          seed: int = 0) -> tuple[EntropyModel, list[float]]:
    """Fit the model to (anomalies, outcome, count) pairs with SGD; returns it and the losses."""
    if not pairs:
        raise ValueError("no (anomalies, outcome) pairs to train on")
    torch.manual_seed(seed)
    model = model or EntropyModel()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x = [p[0] for p in pairs]
    y = [p[1] for p in pairs]
    w = [p[2] for p in pairs]
    losses = [model.train_step(x, y, opt, sample_weight=w) for _ in range(epochs)]
    return model, losses


def entries_from_daemon(client) -> list[dict]:
    """Every ledger entry, fetched 1,000 at a time with ledger.get."""
    n = client.call("ledger.manifest")["chain_length"]
    out = []
    for start in range(0, n, 1000):
        out.extend(client.call("ledger.get", {"start": start, "end": min(n, start + 1000)})["entries"])
    return out


def entries_from_file(path: str) -> list[dict]:
    """Every entry of a ledger file, opened read-only (never created, locked
    or repaired), so it works on the live daemon's ledger."""
    led = Ledger.open(path, create=False, repair_torn_tail=False)
    try:
        return led.entries(0, led.count)
    finally:
        led.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m aal_core.client.entropy",
                                description="train the venom entropy model from the ledger")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--ledger", help="read this ledger file offline (default: ask the daemon)")
    t.add_argument("--socket", default=None, help="the daemon's socket (default $AAL_CORE_SOCKET "
                   "or the system one): read the ledger from it unless --ledger, and --set-model")
    t.add_argument("--out", required=True, help="model file to write")
    t.add_argument("--horizon", type=float, default=60.0, help="seconds an outcome may follow (default 60)")
    t.add_argument("--epochs", type=int, default=200)
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--set-model", action="store_true", help="load it into the daemon (venom.set_model, admin)")
    args = p.parse_args(argv)
    if not args.horizon > 0 or args.epochs < 1 or not args.lr > 0:
        p.error("--horizon and --lr must be > 0 and --epochs at least 1")
    sock = args.socket or default_socket()
    try:
        if args.ledger:
            entries = entries_from_file(args.ledger)
        else:
            with Client(sock) as c:
                entries = entries_from_daemon(c)
    except LedgerError as exc:
        print(f"entropy: ledger {args.ledger}: {exc}", file=sys.stderr)
        return 2
    except (ConnectError, RpcCallError, OSError) as exc:
        print(f"entropy: cannot read the ledger from {sock}: {exc}", file=sys.stderr)
        return 3
    pairs = pairs_from_entries(entries, args.horizon)
    if not pairs:
        print("entropy: no (anomalies, outcome) pairs in the ledger yet "
              f"({len(entries)} entries; need venom entries older than the {args.horizon:g} s horizon)",
              file=sys.stderr)
        return 1
    model, losses = train(pairs, epochs=args.epochs, lr=args.lr)
    out = os.path.abspath(args.out)
    w, b = model.parameters_exact()
    try:
        model.export(out, trained_pairs=sum(n for *_, n in pairs), horizon_s=args.horizon,
                     final_loss=losses[-1])
    except ModelError as exc:
        print(f"entropy: cannot write the model: {exc}", file=sys.stderr)
        return 2
    print(f"entropy: weight {w:.6g} bias {b:.6g} loss {losses[0]:.4g} -> {losses[-1]:.4g} "
          f"on {sum(n for *_, n in pairs)} beats; wrote {out}")
    if args.set_model:
        try:
            with Client(sock) as c:
                c.call("venom.set_model", {"path": out})
        except (ConnectError, RpcCallError, OSError) as exc:
            print(f"entropy: the daemon at {sock} did not load {out}: {exc}", file=sys.stderr)
            return 3
        print(f"entropy: loaded into the daemon at {sock}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
