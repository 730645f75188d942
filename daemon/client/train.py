"""A PyTorch training loop governed by aal-core: a few lines in a plain loop.

    from aal_core.client.train import GovernedTraining

    gov = GovernedTraining("mlp-1", model, optimizer, dataset_size=len(x),
                           micro_batch=64, grad_accum=1, checkpoint_dir="ckpt")
    for epoch in range(epochs):
        for micro_batches in gov.steps(epoch):          # one optimizer step each
            optimizer.zero_grad()
            for idx in micro_batches:                    # gov.micro_batch indices each
                gov.backward(loss_fn(model(x[idx]), y[idx]), len(idx))
            optimizer.step()
            gov.step_done(loss)                          # the safe point
    gov.close()

`steps()` is a batch sampler the object owns: every optimizer step takes
the same `effective batch` indices in the same (seeded) order whatever the
micro-batch, so halving the micro-batch and doubling accumulation leaves the
optimisation as it was (`backward` scales each micro-batch's mean loss by
its share of the step).  At `step_done`, between optimizer steps, the
commands received are applied: batch adjustment, activation checkpointing on
the model's nn.Sequential blocks, an atomic checkpoint (model, optimizer,
step, RNG states), pause until `resume`.  A state packet is sent every
`report_every` steps.

The socket is served by a background thread running an asyncio loop with
aal_core.client.AsyncClient: the training step never waits on it.  A
command is verified there as it arrives (aal_core.train.checks: signature,
run, nonce, freshness, deadline); a refusal is answered with a REJECTED
FieldReport and never reaches the loop.  When the daemon is down or
restarts, the thread reconnects with backoff and registers again; the loop
goes on with its current knobs meanwhile (a paused loop resumes on its own
after `orphan_resume_s` without a daemon).
"""
from __future__ import annotations

import asyncio
import collections
import math
import os
import random
import sys
import threading
import time
import uuid

from google.protobuf import json_format

from ..train.checks import CommandVerifier, Rejected
from ..v1 import train_pb2
from . import AsyncClient, ConnectError, RpcCallError, default_socket

__all__ = ["CircuitOpen", "CommandChannel", "GovernedTraining", "atomic_checkpoint", "load_checkpoint",
           "set_activation_checkpointing"]

R = train_pb2.RejectReason
OUTCOME = train_pb2.FieldReport.Outcome


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _peak_rss_bytes() -> int | None:
    """The resident high-water mark (VmHWM) since the last reset_peak_rss();
    None where /proc/self/status has none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the RSS now (Linux: "5" to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _torch_memory() -> dict:
    """torch's CUDA allocator statistics, where the loop has initialised
    CUDA (never initialised here); {} on a CPU-only loop."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return {}
        return {"torch_allocated_bytes": int(torch.cuda.memory_allocated()),
                "torch_reserved_bytes": int(torch.cuda.memory_reserved()),
                "torch_max_allocated_bytes": int(torch.cuda.max_memory_allocated())}
    except (RuntimeError, AttributeError):
        return {}


class CircuitOpen(RuntimeError):
    """The daemon opened this run's circuit breaker: the loop must not step
    until it is closed (GovernedTraining.wait_closed), or should stop."""

    def __init__(self, reason: str):
        super().__init__(f"aal-core opened the circuit breaker: {reason}")
        self.reason = reason


class CommandChannel:
    """The run's connection to the daemon, in a thread of its own.

    Torch-free: `GovernedTraining` builds on it, and the security tests use
    it alone.  `commands()` returns the verified commands received since the
    last call; `send_state`, `send_field_report` never block (the latest
    state and up to 256 field reports wait while the daemon is away)."""

    def __init__(self, run_id: str, *, socket_path: str | None = None, profile: str | None = None,
                 pid: int | None = None, clock=time.time, reconnect_max_s: float = 2.0):
        self.run_id = run_id
        self.path = socket_path or default_socket()
        self.profile = profile
        self.pid = pid
        self.clock = clock
        self.reconnect_max_s = reconnect_max_s
        self.verifier: CommandVerifier | None = None
        self.connected = threading.Event()
        self.registrations = 0
        self.rejected = collections.Counter()      # by RejectReason name
        self.errors: collections.deque = collections.deque(maxlen=32)
        self._inbox: collections.deque = collections.deque()
        self._reports: collections.deque = collections.deque(maxlen=256)
        self._telemetry: collections.deque = collections.deque(maxlen=64)
        self._state: dict | None = None
        self._busy = False          # a batch taken from the queues is being sent
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"aal-train-{run_id}", daemon=True)
        self._thread.start()

    # ----------------------------------------------------- the loop's side

    def commands(self) -> list:
        """Verified AdaptationCommands received since the last call, in order."""
        out = []
        while self._inbox:
            out.append(self._inbox.popleft())
        return out

    def send_state(self, state: dict) -> None:
        """Queue a SystemStatePacket (as a dict); a newer one replaces an unsent one."""
        with self._lock:
            self._state = state
        self._poke()

    def send_field_report(self, report: dict) -> None:
        with self._lock:
            self._reports.append(report)
        self._poke()

    def send_telemetry(self, packet: dict) -> None:
        """Queue a TelemetryPacket (as a dict); the oldest of 64 unsent is dropped."""
        with self._lock:
            self._telemetry.append(packet)
        self._poke()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def close(self, flush_s: float = 2.0) -> None:
        """Send what is queued (for up to flush_s), then stop the thread."""
        deadline = time.monotonic() + flush_s
        while time.monotonic() < deadline and self.connected.is_set() and \
                (self._reports or self._state or self._telemetry or self._busy):
            time.sleep(0.01)
        self._stop.set()
        self._poke()
        self._thread.join(timeout=5.0)

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:     # the loop is closed: the thread is ending
                pass

    # --------------------------------------------------- the thread's side

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        backoff = 0.05
        while not self._stop.is_set():
            client = AsyncClient(self.path, on_notification=self._on_note)
            try:
                await client.connect()
                await self._register(client)
                backoff = 0.05
                self.connected.set()
                await self._serve(client)
            except (ConnectError, OSError) as exc:
                self.errors.append(str(exc))
            except RpcCallError as exc:          # e.g. the run is still held by a dying connection
                self.errors.append(str(exc))
            finally:
                self.connected.clear()
                await client.close()
            if self._stop.is_set():
                break
            try:
                await asyncio.wait_for(self._wake.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            backoff = min(self.reconnect_max_s, backoff * 2)

    async def _register(self, client: AsyncClient) -> None:
        params = {"run_id": self.run_id}
        if self.profile:
            params["profile"] = self.profile
        if self.pid is not None:
            params["pid"] = self.pid
        res = await client.call("train.register", params)
        if self.verifier is None:
            self.verifier = CommandVerifier(self.run_id, res["public_key"], freshness_s=res["freshness_s"],
                                            future_skew_s=res["future_skew_s"])
        else:
            self.verifier.rotate(res["public_key"])      # rotated while we were away
        self.registrations += 1
        self.register_result = res

    async def _serve(self, client: AsyncClient) -> None:
        while not self._stop.is_set():
            with self._lock:
                state, self._state = self._state, None
                reports = list(self._reports)
                self._reports.clear()
                tel = list(self._telemetry)
                self._telemetry.clear()
                self._busy = True
            try:
                if state is not None:
                    await self._call(client, "train.report", {"state": state})
                while reports:
                    await self._call(client, "train.field_report", {"report": reports[0]})
                    reports.pop(0)
                while tel:
                    await self._call(client, "train.telemetry", {"packet": tel[0]})
                    tel.pop(0)
            finally:
                with self._lock:
                    if reports:       # the connection failed: keep them for the next one
                        self._reports.extendleft(reversed(reports))
                    if tel:
                        self._telemetry.extendleft(reversed(tel))
                    self._busy = False
            if client._closed is not None:
                raise client._closed
            try:
                await asyncio.wait_for(self._wake.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def _call(self, client: AsyncClient, method: str, params: dict) -> None:
        """A call whose refusal is kept in `errors` (and not retried); a lost
        connection raises ConnectError."""
        try:
            await client.call(method, params)
        except RpcCallError as exc:
            self.errors.append(f"{method}: {exc}")

    def _on_note(self, method: str, params: dict) -> None:
        if method == "train.key_rotated":
            if self.verifier is not None:
                self.verifier.rotate(params.get("public_key", ""))
            return
        if method != "train.command":
            return
        cmd = train_pb2.AdaptationCommand()
        raw = params.get("command") if isinstance(params, dict) else None
        if not isinstance(raw, dict):
            self._reject("", R.MALFORMED, f"params.command is {type(raw).__name__}, not an object")
            return
        try:
            json_format.ParseDict(raw, cmd, ignore_unknown_fields=False)
            if self.verifier is None:
                raise Rejected(R.BAD_SIGNATURE, "no public key yet")
            self.verifier.check(cmd, self.clock())
        except json_format.ParseError as exc:
            cid = raw.get("command_id")
            self._reject(cid if isinstance(cid, str) else "", R.MALFORMED, f"cannot parse: {exc}")
            return
        except Rejected as rej:
            self._reject(cmd.command_id, rej.reason, rej.message)
            return
        self._inbox.append(cmd)

    def _reject(self, command_id: str, reason: int, message: str) -> None:
        self.rejected[R.Name(reason)] += 1
        self._reports.append({"command_id": str(command_id), "training_run_id": self.run_id,
                              "outcome": "REJECTED", "reject_reason": R.Name(reason), "reason": message,
                              "timestamp": self.clock()})
        if self._wake is not None:
            self._wake.set()        # in the loop's own thread


# ------------------------------------------------------------------ torch

def set_activation_checkpointing(model, on: bool) -> int:
    """Turn activation checkpointing on or off for every innermost
    nn.Sequential of `model` (one with no nn.Sequential inside it): in
    training, such a block keeps only its input and recomputes its
    activations in the backward pass.  Returns how many blocks changed."""
    import torch
    from torch.utils.checkpoint import checkpoint

    seq = torch.nn.Sequential
    n = 0
    for mod in model.modules():
        if not isinstance(mod, seq) or any(isinstance(m, seq) for m in list(mod.modules())[1:]):
            continue
        if on and "forward" not in mod.__dict__:
            def fwd(x, _seq=mod):
                plain = seq.forward.__get__(_seq)
                if _seq.training and torch.is_grad_enabled():
                    return checkpoint(plain, x, use_reentrant=False)
                return plain(x)
            mod.forward = fwd
            n += 1
        elif not on and "forward" in mod.__dict__:
            del mod.forward
            n += 1
    return n


def atomic_checkpoint(path: str, model, optimizer, *, step: int, epoch: int, extra: dict | None = None) -> None:
    """model + optimizer + step + every RNG state, to path atomically
    (a temporary file, fsync, rename, directory fsync): a crash leaves the
    previous checkpoint or the new one, never half of one."""
    import torch

    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "epoch": epoch,
             "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}, "extra": extra or {}}
    try:
        import numpy
        state["rng"]["numpy"] = numpy.random.get_state()
    except ImportError:
        pass
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        # A failed write (disk full) leaves the previous checkpoint and no temporary file.
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_checkpoint(path: str, model, optimizer) -> dict:
    """Restore what atomic_checkpoint wrote; returns {step, epoch, extra}."""
    import torch

    state = torch.load(path, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if "numpy" in state["rng"]:
        import numpy
        numpy.random.set_state(state["rng"]["numpy"])
    return {"step": state["step"], "epoch": state["epoch"], "extra": state["extra"]}


class GovernedTraining:
    """The loop's side: the batch sampler, the safe point, the knobs."""

    def __init__(self, run_id: str, model, optimizer, *, dataset_size: int, micro_batch: int,
                 grad_accum: int = 1, checkpoint_dir: str | None = None, seed: int = 0,
                 report_every: int = 10, socket_path: str | None = None, profile: str | None = None,
                 pid: int | None = None, experiment: str = "", precision: str = "fp32",
                 orphan_resume_s: float = 30.0, connect: bool = True, clock=time.time):
        if micro_batch < 1 or grad_accum < 1:
            raise ValueError("micro_batch and grad_accum must be >= 1")
        self.run_id = run_id
        self.model, self.optimizer = model, optimizer
        self.dataset_size = dataset_size
        self.base_micro, self.base_accum = micro_batch, grad_accum
        self.micro_batch, self.grad_accum = micro_batch, grad_accum
        self.effective_batch = micro_batch * grad_accum
        self.checkpointing = False
        self.precision = precision
        self.lr_scale = 1.0
        self._base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.paused = False
        self.circuit_open = False
        self.circuit_reason = ""
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_path = os.path.join(checkpoint_dir, f"{run_id}.pt") if checkpoint_dir else None
        self.seed = seed
        self.report_every = report_every
        self.experiment = experiment
        self.orphan_resume_s = orphan_resume_s
        self.clock = clock
        self.global_step = 0
        self._peak_step = 0             # the step whose packet last carried a peak
        self.epoch = 0
        self.last_loss = 0.0
        self.applied: list[dict] = []        # {command_id, type, step}, for the caller's records
        self.checkpoints = 0
        self.paused_s = 0.0
        self._step_t = time.monotonic()
        self._step_time = 0.0
        self.channel = CommandChannel(run_id, socket_path=socket_path, profile=profile, pid=pid,
                                      clock=clock) if connect else None

    # ----------------------------------------------------------- sampling

    def steps(self, epoch: int):
        """Yield, for each optimizer step of the epoch, its micro-batches
        (index tensors): the epoch's seeded permutation cut into effective
        batches, each cut into micro-batches of the current size."""
        import torch

        self.epoch = epoch
        g = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
        perm = torch.randperm(self.dataset_size, generator=g)
        start = 0
        while True:
            # Read per step: a change applies from the next one (an
            # effective-batch cut takes fewer samples per step from here on).
            eff, m = self.effective_batch, self.micro_batch
            if start + eff > self.dataset_size:
                return
            chunk = perm[start:start + eff]
            start += eff
            yield [chunk[i:i + m] for i in range(0, eff, m)]

    def backward(self, loss, n: int) -> None:
        """loss.backward() scaled by the micro-batch's share of the step
        (mean loss of n samples -> its part of the effective batch's mean)."""
        (loss * (n / self.effective_batch)).backward()

    # ---------------------------------------------------------- safe point

    def step_done(self, loss: float | None = None) -> None:
        """Call after optimizer.step(): reports, applies commands, pauses.
        Raises CircuitOpen while the daemon holds the run's breaker open."""
        now = time.monotonic()
        self._step_time = now - self._step_t
        self.global_step += 1
        if loss is not None:
            self.last_loss = float(loss)
        if self.channel is not None:
            if self.global_step % self.report_every == 0 or not math.isfinite(self.last_loss):
                self.report()
            self._apply_all()
            while self.paused and not self.circuit_open:
                self._wait_paused()
        self._step_t = time.monotonic()
        if self.circuit_open:
            raise CircuitOpen(self.circuit_reason)

    def wait_closed(self, timeout: float | None = None, loss: float | None = None) -> bool:
        """Block until the daemon closes the breaker (True) or timeout passes
        (False), applying what arrives and reporting each second; `loss`
        (e.g. the restored checkpoint's) is reported as the run's loss."""
        if loss is not None:
            self.last_loss = float(loss)
        deadline = None if timeout is None else time.monotonic() + timeout
        last = 0.0
        while self.circuit_open and self.channel is not None:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if now - last >= 1.0:
                self.report()
                last = now
            time.sleep(0.05)
            self._apply_all()
        while self.paused and not self.circuit_open and self.channel is not None:
            self._wait_paused()
        self._step_t = time.monotonic()
        return not self.circuit_open

    def telemetry(self, metrics: dict | list | None = None, *, events: list | None = None,
                  health: str = "") -> dict:
        """Send a TelemetryPacket: metrics as {name: value} or MetricPoint
        dicts, events as TelemetryEvent dicts (or names), health HEALTHY /
        DEGRADED / UNHEALTHY (or "" to leave it).  Never blocks."""
        pts = []
        if isinstance(metrics, dict):
            pts = [{"name": k, "value": float(v)} for k, v in metrics.items()]
        elif metrics:
            pts = [dict(m) for m in metrics]
        now = self.clock()
        evs = [({"name": e} if isinstance(e, str) else dict(e)) for e in (events or [])]
        for e in evs:
            e.setdefault("timestamp", now)
        pkt = {"packet_id": uuid.uuid4().hex, "training_run_id": self.run_id, "timestamp": now,
               "metrics": pts, "events": evs}
        if health:
            pkt["health"] = health
        if self.channel is not None:
            self.channel.send_telemetry(pkt)
        return pkt

    def knobs(self) -> dict:
        return {"micro_batch_size": self.micro_batch, "grad_accum_steps": self.grad_accum,
                "activation_checkpointing": self.checkpointing, "precision": self.precision,
                "base_micro_batch_size": self.base_micro, "base_grad_accum_steps": self.base_accum,
                "paused": self.paused, "lr_scale": self.lr_scale, "circuit_open": self.circuit_open}

    def state(self) -> dict:
        mem = {"rss_bytes": _rss_bytes()}
        peak = _peak_rss_bytes()
        # Only over steps made since the last packet (a paused loop's peak is no step's).
        if peak is not None and self.global_step > self._peak_step:
            mem["peak_rss_bytes"] = max(peak, mem["rss_bytes"])
        mem.update(_torch_memory())
        st = self._step_time
        loss = self.last_loss
        return {"version": 1, "packet_id": uuid.uuid4().hex, "training_run_id": self.run_id,
                "experiment_name": self.experiment, "current_epoch": self.epoch, "global_step": self.global_step,
                "training_loss": loss if math.isfinite(loss) else str(loss).replace("nan", "NaN")
                .replace("inf", "Infinity"),
                "samples_per_s": (self.effective_batch / st) if st > 0 else 0.0,
                "step_time_s": st, "knobs": self.knobs(), "memory": mem, "timestamp": self.clock()}

    def report(self) -> None:
        """Send a state packet; the RSS high-water mark restarts from here, so
        the next packet's peak is that of the steps between the two."""
        if self.channel is not None:
            self.channel.send_state(self.state())
            if self.global_step > self._peak_step:
                reset_peak_rss()
                self._peak_step = self.global_step

    def _metrics(self) -> dict:
        return {"micro_batch": float(self.micro_batch), "grad_accum": float(self.grad_accum),
                "activation_checkpointing": float(self.checkpointing), "paused": float(self.paused),
                "lr_scale": float(self.lr_scale), "circuit_open": float(self.circuit_open),
                "rss_bytes": float(_rss_bytes()), "global_step": float(self.global_step)}

    def _apply_all(self) -> None:
        for cmd in self.channel.commands():
            self._apply(cmd)

    def _apply(self, cmd) -> None:
        before = self._metrics()
        rep = {"command_id": cmd.command_id, "training_run_id": self.run_id, "metrics_before": before,
               "global_step": self.global_step}
        try:
            CommandVerifier.check_deadline(cmd, self.clock())
            what = self._do(cmd)
        except Rejected as rej:
            self.channel.rejected[rej.reason_name] += 1
            rep.update(outcome="REJECTED", reject_reason=rej.reason_name, reason=rej.message)
        except Exception as exc:  # noqa: BLE001 - reported as FAILED, the loop goes on
            rep.update(outcome="FAILED", reason=f"{type(exc).__name__}: {exc}")
        else:
            rep.update(outcome="APPLIED", reason=what)
            self.applied.append({"command_id": cmd.command_id, "type": cmd.WhichOneof("payload"),
                                 "step": self.global_step})
        rep["metrics_after"] = self._metrics()
        rep["timestamp"] = self.clock()
        self.channel.send_field_report(rep)
        self.report()       # the daemon sees the new knobs at once

    def _do(self, cmd) -> str:
        kind = cmd.WhichOneof("payload")
        if kind == "batch_adjustment":
            b = cmd.batch_adjustment
            eff = b.micro_batch * b.grad_accum_steps
            base = self.base_micro * self.base_accum
            # The effective batch is kept, or cut to a divisor of the run's own
            # (the daemon's cut_batch rungs, sent with their LR scale).
            if b.micro_batch < 1 or b.grad_accum_steps < 1 or eff > base or base % eff:
                raise ValueError(f"micro {b.micro_batch} x accum {b.grad_accum_steps} = {eff} is not the "
                                 f"effective batch {base} or a divisor of it")
            self.micro_batch, self.grad_accum = b.micro_batch, b.grad_accum_steps
            self.effective_batch = eff
            return f"micro-batch {b.micro_batch}, accumulation {b.grad_accum_steps}, effective batch {eff}"
        if kind == "memory_saving":
            m = cmd.memory_saving
            n = set_activation_checkpointing(self.model, m.activation_checkpointing)
            self.checkpointing = m.activation_checkpointing
            if m.precision:
                self.precision = m.precision
            return f"activation checkpointing {'on' if self.checkpointing else 'off'} ({n} blocks changed)"
        if kind == "checkpoint":
            return self.save_checkpoint()
        if kind == "pause":
            if self.checkpoint_path and not self._fresh_checkpoint():
                self.save_checkpoint()
            self.paused = True
            self._paused_at = time.monotonic()
            return f"paused until stress < {cmd.pause.until_stress_below:g}"
        if kind == "resume":
            self._resume()
            return "resumed"
        if kind == "optimizer_adjustment":
            scale = cmd.optimizer_adjustment.lr_scale
            if not (math.isfinite(scale) and 0.0 < scale <= 1.0):
                raise ValueError(f"lr_scale {scale} is not in (0, 1]")
            self.lr_scale = scale
            for g, lr in zip(self.optimizer.param_groups, self._base_lrs):
                g["lr"] = lr * self.lr_scale
            lrs = ", ".join(f"{g['lr']:g}" for g in self.optimizer.param_groups)
            return f"lr scale {self.lr_scale:g} (lr {lrs})"
        if kind == "circuit_breaker":
            # No checkpoint here: a run opened for a non-finite loss would
            # overwrite its last good one with poisoned weights.
            self.circuit_open = cmd.circuit_breaker.open
            self.circuit_reason = cmd.circuit_breaker.reason
            return f"circuit {'open' if self.circuit_open else 'closed'}: {cmd.circuit_breaker.reason}"
        raise Rejected(R.UNSUPPORTED, f"payload {kind!r} is not applied by this client")

    def _fresh_checkpoint(self) -> bool:
        return getattr(self, "_ckpt_step", None) == self.global_step

    def save_checkpoint(self) -> str:
        if not self.checkpoint_path:
            raise ValueError("no checkpoint_dir given")
        atomic_checkpoint(self.checkpoint_path, self.model, self.optimizer, step=self.global_step,
                          epoch=self.epoch, extra={"knobs": self.knobs(), "seed": self.seed})
        self.checkpoints += 1
        self._ckpt_step = self.global_step
        return f"checkpoint at step {self.global_step} in {self.checkpoint_path}"

    def _resume(self) -> None:
        if self.paused:
            self.paused_s += time.monotonic() - self._paused_at
        self.paused = False

    def _wait_paused(self) -> None:
        """While paused: apply what arrives, report each second, and resume
        alone once the daemon has been away for orphan_resume_s."""
        away_since = None
        last_report = 0.0
        while self.paused and not self.circuit_open:
            time.sleep(0.05)
            self._apply_all()
            now = time.monotonic()
            if now - last_report >= 1.0:
                self.report()
                last_report = now
            if self.channel.connected.is_set():
                away_since = None
            elif away_since is None:
                away_since = now
            elif now - away_since >= self.orphan_resume_s:
                self._resume()

    def close(self) -> None:
        if self.channel is not None:
            self.report()
            self.channel.close()
