"""TrainUnit: training runs on the socket.

    train.register      WRITE  a run (and its governor job, same id, with the
                               profile's DEGRADE clause dropped: the ladder is
                               the run's degradation)
    train.report        WRITE  a SystemStatePacket; the daemon fills its
                               HardwareContext and answers with commands
    train.field_report  WRITE  a FieldReport (APPLIED / REJECTED / FAILED)
    train.status        READ   runs, knobs, pending and answered commands
    train.list          READ   one line per run

Commands are AdaptationCommands signed with the daemon's key (keys unit),
pushed to the run's connection as notification `train.command`
{command}, and recorded in the ledger (`train.command`), as is every field
report (`train.field_report`).  The ladder (ladder.py) is evaluated on
every stress sample and every report.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import uuid
from dataclasses import dataclass, field

from google.protobuf import json_format

from .. import errors as E
from ..errors import RpcError, invalid_params
from ..govern.governor import JOB_ID
from ..log import get_logger
from ..rpc.registry import Access
from ..runes import format_profile, resolve
from ..units import Unit
from ..v1 import train_pb2
from .checks import sign_command
from .ladder import Knobs, Ladder, build_rungs, commands_between, knobs_at

__all__ = ["TrainUnit"]

log = get_logger("train")

CMD = train_pb2.AdaptationCommand
TYPE_OF = {"batch_adjustment": CMD.BATCH_ADJUSTMENT, "optimizer_adjustment": CMD.OPTIMIZER_ADJUSTMENT,
           "checkpoint": CMD.CHECKPOINT, "pause": CMD.PAUSE, "resume": CMD.RESUME,
           "memory_saving": CMD.MEMORY_SAVING, "circuit_breaker": CMD.CIRCUIT_BREAKER}
OUTCOME = train_pb2.FieldReport.Outcome
# Seconds past its deadline a command still pending is called expired.
EXPIRY_GRACE_S = 5.0
DEFAULT_PROFILE = "BALANCED"


def _to_dict(msg) -> dict:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _parse(obj, cls, what: str):
    try:
        return json_format.ParseDict(obj, cls(), ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise invalid_params(f"{what} is not a valid {cls.DESCRIPTOR.name}: {exc}", param=what) from None


@dataclass
class Run:
    run_id: str
    owner_uid: int
    conn: object
    token: int
    registered_at: float
    base: Knobs | None = None
    ladder: Ladder | None = None
    reported: Knobs | None = None      # the knobs of the latest report
    assumed: Knobs | None = None       # ... once every pending command is applied
    knobs: dict = field(default_factory=dict)
    last_state: dict | None = None
    reports: int = 0
    last_report_at: float | None = None
    pending: dict = field(default_factory=dict)        # command_id -> record
    history: collections.deque = field(default_factory=collections.deque)
    commands_total: int = 0
    rejections: collections.Counter = field(default_factory=collections.Counter)
    last_issue: float = float("-inf")  # monotonic

    @property
    def connected(self) -> bool:
        return self.conn is not None and not getattr(self.conn, "closing", False)


class TrainUnit(Unit):
    name = "train"

    def __init__(self, ctx, *, sensing=None, governor=None, ledger=None, keys=None):
        super().__init__(ctx)
        self.sensing = sensing
        self.governor = governor
        self.ledger = ledger
        self.keys = keys
        self.cfg = ctx.config.train
        self.runs: dict[str, Run] = {}
        self._tokens = 0
        self._ledger_tasks: set = set()
        self.commands_total = collections.Counter()      # by payload field
        self.field_reports_total = collections.Counter()  # by outcome name
        self.rejections = collections.Counter()          # by RejectReason name
        self.expired_total = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.sensing is not None:
            self.sensing.add_listener(self.on_sample)
        if self.keys is not None:
            self.keys.on_rotate(self._on_rotate)

    async def stop(self) -> None:
        if self._ledger_tasks:
            await asyncio.wait(list(self._ledger_tasks), timeout=2.0)

    def reload(self, config) -> None:
        self.cfg = config.train
        for run in self.runs.values():
            if run.base is not None:
                self._build_ladder(run)

    def status(self) -> dict:
        return {"train": {"runs": len(self.runs),
                          "connected": sum(1 for r in self.runs.values() if r.connected),
                          "pending": sum(len(r.pending) for r in self.runs.values()),
                          "commands_total": sum(self.commands_total.values()),
                          "field_reports_total": sum(self.field_reports_total.values()),
                          "rejections": dict(self.rejections), "expired_total": self.expired_total}}

    def summary(self) -> str:
        if not self.runs:
            return ""
        pending = sum(len(r.pending) for r in self.runs.values())
        return f"{len(self.runs)} runs" + (f", {pending} commands pending" if pending else "")

    # --------------------------------------------------------------- policy

    def _stress(self) -> float | None:
        s = self.sensing.latest() if self.sensing is not None else None
        return None if s is None else float(s.stress)

    def _build_ladder(self, run: Run) -> None:
        old = run.ladder
        run.ladder = Ladder(build_rungs(self.cfg, run.base.micro_batch), self.cfg.hold_s)
        if old is not None:
            run.ladder.rung = min(old.rung, len(run.ladder.rungs))

    def on_sample(self, sample) -> None:
        """Every stress sample: each run's ladder, and expiry of pending commands."""
        try:
            now = self.ctx.clock.monotonic()
            for run in list(self.runs.values()):
                self._expire(run)
                if run.ladder is not None and run.connected:
                    self._evaluate(run, float(sample.stress), now)
        except Exception as exc:  # noqa: BLE001 - a bad run must not stop sensing's loop
            log.error("sample_failed", error=repr(exc))

    def _evaluate(self, run: Run, stress: float, now: float) -> list[str]:
        issued = []
        change = run.ladder.evaluate(stress, now)
        want = knobs_at(run.ladder.rungs, run.ladder.rung, run.base)
        if change is not None:
            rung, why = change
            log.info("rung", run_id=run.run_id, rung=rung, why=why)
            issued += self._issue(run, commands_between(run.assumed, want, resume_below=self.cfg.resume_below),
                                  why, stress)
            run.assumed = want
        elif not run.pending and run.reported is not None and run.reported != want \
                and now - run.last_issue >= self.cfg.reissue_s:
            why = f"reported knobs differ from rung {run.ladder.rung}'s: sent again"
            issued += self._issue(run, commands_between(run.reported, want, resume_below=self.cfg.resume_below),
                                  why, stress)
            run.assumed = want
        return issued

    def _issue(self, run: Run, payloads: list, why: str, stress: float) -> list[str]:
        ids = []
        wall = self.ctx.clock.wall()
        for fname, payload in payloads:
            cmd = CMD(version=1, command_id=uuid.uuid4().hex, command_type=TYPE_OF[fname],
                      training_run_id=run.run_id, issued_at=wall,
                      issued_by=f"aal-core/{self.keys.public_hex[:16]}",
                      execution_deadline_ms=self.cfg.deadline_ms)
            json_format.ParseDict(payload, getattr(cmd, fname))
            getattr(cmd, fname).SetInParent()
            cmd.annotations.update({"reason": why, "rung": str(run.ladder.rung), "stress": f"{stress:.4f}"})
            sign_command(cmd, self.keys.sign)
            d = _to_dict(cmd)
            run.pending[cmd.command_id] = {"command": d, "status": "pending",
                                           "_deadline": self.ctx.clock.monotonic() + self.cfg.deadline_ms / 1000.0}
            run.commands_total += 1
            self.commands_total[fname] += 1
            run.last_issue = self.ctx.clock.monotonic()
            delivered = run.conn.notify("train.command", {"command": d}) if run.connected else False
            log.info("command", run_id=run.run_id, command_id=cmd.command_id, type=fname,
                     delivered=delivered, why=why)
            self._record({"type": "train.command", "run_id": run.run_id, "command": d,
                          "delivered": bool(delivered)})
            ids.append(cmd.command_id)
        return ids

    def _expire(self, run: Run) -> None:
        now = self.ctx.clock.monotonic()
        for cid, rec in list(run.pending.items()):
            if now > rec["_deadline"] + EXPIRY_GRACE_S:
                del run.pending[cid]
                rec["status"] = "expired"
                self._answered(run, rec)
                self.expired_total += 1
                run.assumed = run.reported

    def _answered(self, run: Run, rec: dict) -> None:
        rec.pop("_deadline", None)
        run.history.append(rec)
        while len(run.history) > self.cfg.history:
            run.history.popleft()

    def _record(self, entry: dict):
        if self.ledger is None:
            return None
        fut = asyncio.ensure_future(self.ledger.append(entry))
        self._ledger_tasks.add(fut)

        def done(f):
            self._ledger_tasks.discard(f)
            if not f.cancelled() and f.exception() is not None:
                log.error("ledger_append_failed", error=repr(f.exception()), type=entry.get("type"))
        fut.add_done_callback(done)
        return fut

    def _on_rotate(self, old_hex: str, new_hex: str) -> None:
        """Tell every connected run: commands signed by old_hex are refused from now on."""
        for run in self.runs.values():
            if run.connected:
                run.conn.notify("train.key_rotated", {"previous_public_key": old_hex, "public_key": new_hex})

    # ------------------------------------------------------------------ RPC

    def register(self, registry) -> None:
        r = registry
        r.add("train.register", self.rpc_register, params="TrainRegisterParams", result="TrainRegisterResult",
              access=Access.WRITE, example={"run_id": "example-run"})
        r.add("train.report", self.rpc_report, params="TrainReportParams", result="TrainReportResult",
              access=Access.WRITE, example={"state": {"training_run_id": "no-such-run"}},
              example_error=E.NOT_FOUND)
        r.add("train.field_report", self.rpc_field_report, params="TrainFieldReportParams",
              result="TrainFieldReportResult", access=Access.WRITE,
              example={"report": {"command_id": "0" * 32, "training_run_id": "no-such-run",
                                  "outcome": "APPLIED"}}, example_error=E.NOT_FOUND)
        r.add("train.status", self.rpc_status, params="TrainStatusParams", result="TrainStatusResult")
        r.add("train.list", self.rpc_list, result="TrainListResult")

    def _run_of(self, run_id: str, call) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise E.not_found(f"no training run {run_id!r} (train.register it first)", run_id=run_id)
        if call.access < Access.ADMIN and run.owner_uid != call.uid:
            raise RpcError(E.PERMISSION_DENIED, f"run {run_id!r} belongs to uid {run.owner_uid}",
                           {"run_id": run_id, "owner_uid": run.owner_uid, "peer_uid": call.uid})
        return run

    def rpc_register(self, p, call):
        """Register a training run: a governor job of the same id, commands pushed to this connection."""
        run_id = p["run_id"]
        if not JOB_ID.fullmatch(run_id):
            raise invalid_params("run_id must be 1-64 characters of A-Z a-z 0-9 . _ -", param="run_id",
                                 got=run_id[:80])
        old = self.runs.get(run_id)
        if old is not None and old.connected:
            raise RpcError(E.CONFLICT, f"run {run_id!r} is registered by a live connection",
                           {"run_id": run_id})
        if old is not None and call.access < Access.ADMIN and old.owner_uid != call.uid:
            raise RpcError(E.PERMISSION_DENIED, f"run {run_id!r} belongs to uid {old.owner_uid}",
                           {"run_id": run_id, "owner_uid": old.owner_uid, "peer_uid": call.uid})
        if old is None and len(self.runs) >= self.cfg.max_runs:
            gone = [r for r in self.runs.values() if not r.connected]
            if not gone:
                raise RpcError(E.CONFLICT, f"train.max_runs ({self.cfg.max_runs}) runs are connected",
                               {"max_runs": self.cfg.max_runs})
            del self.runs[min(gone, key=lambda r: r.registered_at).run_id]
        name, prof = resolve(p.get("profile") or DEFAULT_PROFILE)
        profile_text = format_profile(dataclasses.replace(prof, degrade=None))
        job = {"enforced": False}
        if self.governor is not None:
            params = {"job_id": run_id, "profile": profile_text,
                      "metadata": {"kind": "train", "degradation": "train ladder"}}
            if p.get("pid") is not None:
                params["pid"] = p["pid"]
            job = self.governor.rpc_submit(params, call)
        self._tokens += 1
        if old is None:
            run = Run(run_id=run_id, owner_uid=call.uid, conn=call.conn, token=self._tokens,
                      registered_at=self.ctx.clock.wall())
            self.runs[run_id] = run
        else:
            run = old
            run.conn, run.token = call.conn, self._tokens
            run.reported = run.assumed = None      # the next report says where it is
        call.on_close(lambda rid=run_id, tok=self._tokens: self._on_close(rid, tok))
        log.info("run_registered", run_id=run_id, reregistered=old is not None, pid=p.get("pid") or "-",
                 enforced=job.get("enforced"))
        self._record({"type": "train.register", "run_id": run_id, "profile": profile_text,
                      "pid": p.get("pid"), "reregistered": old is not None})
        out = {"run_id": run_id, "job_id": run_id, "public_key": self.keys.public_hex, "algorithm": "ed25519",
               "freshness_s": self.cfg.freshness_s, "future_skew_s": self.cfg.future_skew_s,
               "enforced": bool(job.get("enforced")), "reregistered": old is not None}
        if job.get("cgroup"):
            out["cgroup"] = job["cgroup"]
        return out

    def _on_close(self, run_id: str, token: int) -> None:
        run = self.runs.get(run_id)
        if run is not None and run.token == token:
            run.conn = None
            log.info("run_disconnected", run_id=run_id, pending=len(run.pending))

    def _hardware(self) -> dict:
        s = self.sensing.latest() if self.sensing is not None else None
        if s is None:
            return {}
        hw = {"stress": float(s.stress), "band": s.band, "model": s.model, "view": s.view,
              "trend_per_s": float(s.trend_per_s), "sample_timestamp": float(s.timestamp)}
        if s.seconds_to_exhaustion is not None:
            hw["seconds_to_exhaustion"] = float(s.seconds_to_exhaustion)
        if s.temp_c is not None:
            hw["temperature_c"] = float(s.temp_c)
        if s.thermal_margin_c is not None:
            hw["thermal_margin_c"] = float(s.thermal_margin_c)
        return hw

    def rpc_report(self, p, call):
        """A SystemStatePacket from a run: stored with the daemon's HardwareContext; commands answer it."""
        pkt = _parse(p["state"], train_pb2.SystemStatePacket, "state")
        run = self._run_of(pkt.training_run_id, call)
        k = pkt.knobs
        if k.micro_batch_size < 1 or k.grad_accum_steps < 1:
            raise invalid_params("state.knobs.micro_batch_size and grad_accum_steps must be >= 1",
                                 param="state.knobs", got=_to_dict(k))
        pkt.hardware.Clear()
        json_format.ParseDict(self._hardware(), pkt.hardware)
        run.last_state = _to_dict(pkt)
        run.knobs = _to_dict(k)
        run.reports += 1
        run.last_report_at = self.ctx.clock.wall()
        run.reported = Knobs(k.micro_batch_size, k.grad_accum_steps, k.activation_checkpointing, k.paused)
        if run.base is None:
            run.base = Knobs(k.base_micro_batch_size or k.micro_batch_size,
                             k.base_grad_accum_steps or k.grad_accum_steps)
            self._build_ladder(run)
        if not run.pending:
            run.assumed = run.reported
        issued = []
        stress = self._stress()
        if stress is not None:
            self._expire(run)
            issued = self._evaluate(run, stress, self.ctx.clock.monotonic())
        return {"run_id": run.run_id, "rung": run.ladder.rung, "issued": issued,
                "pending": len(run.pending), "hardware": run.last_state.get("hardware", {})}

    async def rpc_field_report(self, p, call):
        """A run's answer to a command: APPLIED, REJECTED (with its reason) or FAILED; ledgered."""
        rep = _parse(p["report"], train_pb2.FieldReport, "report")
        run = self._run_of(rep.training_run_id, call)
        outcome = OUTCOME.Name(rep.outcome)
        self.field_reports_total[outcome] += 1
        reason = train_pb2.RejectReason.Name(rep.reject_reason)
        if rep.outcome == OUTCOME.REJECTED:
            self.rejections[reason] += 1
            run.rejections[reason] += 1
        known = rep.command_id in run.pending or any(h["command"]["command_id"] == rep.command_id
                                                     for h in run.history)
        # A replay's refusal says nothing of the first delivery's fate.
        replay = rep.outcome == OUTCOME.REJECTED and rep.reject_reason == train_pb2.RejectReason.REPLAYED
        rec = None if replay else run.pending.pop(rep.command_id, None)
        if rec is not None:
            rec["status"] = outcome
            if rep.outcome == OUTCOME.REJECTED:
                rec["reject_reason"] = reason
            if rep.reason:
                rec["reason"] = rep.reason
            rec["answered_at"] = self.ctx.clock.wall()
            self._answered(run, rec)
            if rep.outcome != OUTCOME.APPLIED and not run.pending:
                run.assumed = run.reported      # the reissue rule takes it from there
        log.info("field_report", run_id=run.run_id, command_id=rep.command_id, outcome=outcome,
                 reject_reason=reason if rep.outcome == OUTCOME.REJECTED else "-", known=known)
        index = 0
        fut = self._record({"type": "train.field_report", "run_id": run.run_id, "known": known,
                            "report": _to_dict(rep)})
        if fut is not None:
            index, _ = await fut
        return {"command_id": rep.command_id, "known": known, "ledger_index": index}

    def _run_dict(self, run: Run) -> dict:
        strip = lambda rec: {k: v for k, v in rec.items() if not k.startswith("_")}  # noqa: E731
        out = {"run_id": run.run_id, "connected": run.connected,
               "rung": run.ladder.rung if run.ladder else 0,
               "rung_names": run.ladder.names() if run.ladder else [],
               "knobs": run.knobs, "reports": run.reports,
               "pending": [strip(r) for r in run.pending.values()],
               "applied": [strip(r) for r in run.history],
               "commands_total": run.commands_total, "rejections": dict(run.rejections),
               "registered_at": run.registered_at}
        if run.last_state is not None:
            out["last_state"] = run.last_state
        if run.last_report_at is not None:
            out["last_report_at"] = run.last_report_at
        return out

    def rpc_status(self, p, call):
        """Training runs: knobs, rung, last state, pending and answered commands, rejections."""
        rid = p.get("run_id")
        if rid is not None and rid not in self.runs:
            raise E.not_found(f"no training run {rid!r}", run_id=rid)
        runs = [self.runs[rid]] if rid is not None else list(self.runs.values())
        return {"runs": [self._run_dict(r) for r in runs],
                "commands_total": sum(self.commands_total.values()),
                "field_reports_total": sum(self.field_reports_total.values()),
                "rejections": dict(self.rejections), "expired_total": self.expired_total,
                "public_key": self.keys.public_hex if self.keys is not None and self.keys.key else ""}

    def rpc_list(self, p, call):
        """One line per training run."""
        return {"runs": [{"run_id": r.run_id, "connected": r.connected,
                          "rung": r.ladder.rung if r.ladder else 0, "knobs": r.knobs,
                          "pending": len(r.pending), "commands_total": r.commands_total}
                         for r in self.runs.values()]}

    # -------------------------------------------------------------- metrics

    def metrics(self) -> list[dict]:
        """Families for the exporter (issue 12), built from the state now."""
        def fam(name, typ, help_, samples):
            return {"name": name, "type": typ, "help": help_, "samples": samples}
        return [
            fam("aal_core_train_runs", "gauge", "Training runs registered, by connection state.",
                [{"labels": {"connected": str(c).lower()},
                  "value": float(sum(1 for r in self.runs.values() if r.connected == c))} for c in (True, False)]),
            fam("aal_core_train_commands_total", "counter", "AdaptationCommands issued, by payload.",
                [{"labels": {"type": t}, "value": float(self.commands_total[t])} for t in TYPE_OF]),
            fam("aal_core_train_field_reports_total", "counter", "Field reports received, by outcome.",
                [{"labels": {"outcome": o}, "value": float(self.field_reports_total[o])}
                 for o in ("APPLIED", "REJECTED", "FAILED")]),
            fam("aal_core_train_rejections_total", "counter", "Commands clients refused, by reason.",
                [{"labels": {"reason": v.name}, "value": float(self.rejections[v.name])}
                 for v in train_pb2.RejectReason.DESCRIPTOR.values if v.number]),
            fam("aal_core_train_commands_expired_total", "counter",
                "Commands past their deadline without a field report.", [{"labels": {}, "value": float(self.expired_total)}]),
            fam("aal_core_train_run_rung", "gauge", "The policy ladder's rung of each run (0: as started).",
                [{"labels": {"run_id": r.run_id}, "value": float(r.ladder.rung if r.ladder else 0)}
                 for r in self.runs.values()]),
        ]
