"""TrainUnit: training runs on the socket.

    train.register      WRITE  a run (and its governor job, same id, with the
                               profile's DEGRADE clause dropped: the ladder is
                               the run's degradation)
    train.report        WRITE  a SystemStatePacket; the daemon fills its
                               HardwareContext and answers with commands
    train.field_report  WRITE  a FieldReport (APPLIED / REJECTED / FAILED)
    train.telemetry     WRITE  a TelemetryPacket: metric series (latest value,
                               bounded), events (bounded; ledgered), health
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
import json
import math
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
from ..stress import thermal
from ..stress.trend import Ring
from .checks import sign_command
from .ladder import Knobs, Ladder, build_rungs, commands_between, knobs_at
from .swing import TROUGH_POINTS, ahead, learn, lift_level, policy_stress, trough_slope

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
MIB = 1 << 20
HEALTH = ("HEALTHY", "DEGRADED", "UNHEALTHY")


def _to_dict(msg) -> dict:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _payload_type(run, command_id: str, rec) -> str:
    """The payload field of the command a field report answers ("unknown" if it is not one of this run's)."""
    cands = [rec] if rec is not None else []
    cands += [run.pending.get(command_id)] + [h for h in run.history if h["command"]["command_id"] == command_id]
    for c in cands:
        if c is not None:
            return next((f for f in TYPE_OF if f in c["command"]), "unknown")
    return "unknown"


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
    # The own-swing discount: the budget's used fraction at the run's latest
    # report (its trough: reports are sent at the safe point) and its own
    # per-step swing (peak - trough RSS, as a fraction of the budget).
    trough_used: float | None = None
    swings: dict = field(default_factory=dict)      # micro-batch -> swing
    troughs: Ring = field(default_factory=lambda: Ring(TROUGH_POINTS))     # (monotonic, trough_used)
    step_s: float = 0.0                # the latest report's step time
    discounted: int = 0                # samples whose trend was the run's own
    # The circuit breaker: open or not, why, since when (wall), and which
    # trigger ("stress" or "loss") opened it; stress >= pause_at while paused since.
    breaker_open: bool = False
    breaker_reason: str = ""
    breaker_kind: str = ""
    breaker_since: float | None = None
    breaker_opened_total: int = 0
    critical_paused_since: float | None = None
    reported_breaker: bool = False
    # train.telemetry: the latest value of each metric series, recent events, health.
    telemetry_packets: int = 0
    metrics: collections.OrderedDict = field(default_factory=collections.OrderedDict)
    events: collections.deque = field(default_factory=collections.deque)
    health: str = ""
    health_since: float | None = None
    last_telemetry_at: float | None = None

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
        self.field_reports_by_type = collections.Counter()  # by (payload type, outcome name)
        self.rejections = collections.Counter()          # by RejectReason name
        self.expired_total = 0
        self.telemetry_packets_total = 0
        self._trend_since: float | None = None     # monotonic: the trend > 0 since
        self._reporting: str | None = None         # the run whose report takes a sample now
        self.telemetry_events_total = 0

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
                          "rejections": dict(self.rejections), "expired_total": self.expired_total,
                          "breakers_open": sum(1 for r in self.runs.values() if r.breaker_open),
                          "telemetry_packets_total": self.telemetry_packets_total}}

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
        run.ladder = Ladder(build_rungs(self.cfg, run.base.micro_batch, run.base.grad_accum), self.cfg.hold_s)
        if old is not None:
            run.ladder.rung = min(old.rung, len(run.ladder.rungs))

    def on_sample(self, sample) -> None:
        """Every stress sample: each run's ladder, and expiry of pending commands."""
        try:
            now = self.ctx.clock.monotonic()
            trend = (getattr(sample, "components", None) or {}).get("trend", 0.0)
            if trend <= 0.0:
                self._trend_since = None
            elif self._trend_since is None:
                self._trend_since = now
            for run in list(self.runs.values()):
                self._expire(run)
                if run.ladder is not None and run.connected and run.run_id != self._reporting:
                    self._evaluate(run, self._policy_stress(run, sample), now)
        except Exception as exc:  # noqa: BLE001 - a bad run must not stop sensing's loop
            log.error("sample_failed", error=repr(exc))

    def _grow(self, run: Run) -> tuple[float | None, float]:
        """(the troughs' slope, what the budget's use grows by until the
        run's next peak)."""
        slope = trough_slope(run.troughs, self.ctx.clock.monotonic())
        return slope, ahead(slope, run.step_s)

    def _policy_stress(self, run: Run, s) -> float:
        """The stress the ladder reads for this run: the sample's, at least
        the level of the run's next peak, its trend left out while it is the
        run's own step (swing.py)."""
        swing = run.swings.get(run.reported.micro_batch) if run.reported is not None else None
        age = None if self._trend_since is None else self.ctx.clock.monotonic() - self._trend_since
        stress, discounted = policy_stress(float(s.stress), getattr(s, "components", None) or {},
                                           trough_used=run.trough_used, swing=swing,
                                           margin=self.cfg.own_swing_margin, trend_age_s=age,
                                           trend_max_s=self.cfg.own_trend_max_s, grow=self._grow(run)[1])
        run.discounted += discounted
        return stress

    def _below(self, run: Run) -> float | None:
        """The stress the lift of the run's rung is judged by (swing.lift_level):
        a rung is not lifted for the run to be sent straight back by its own
        step, nor while something else grows."""
        if run.ladder.rung == 0 or run.trough_used is None:
            return None
        lower = knobs_at(run.ladder.rungs, run.ladder.rung - 1, run.base, self.cfg.lr_rule)
        slope, _ = self._grow(run)
        return lift_level(run.trough_used, run.swings.get(lower.micro_batch), slope, run.step_s)

    def _trough_sample(self, run: Run):
        """A sample taken now, at the run's safe point (its report): the
        trough.  The latest periodic one may be 0.1-0.5 s old, taken anywhere
        in a step.  This run's ladder is not evaluated on it by on_sample:
        rpc_report does, once the trough is learnt."""
        if self.sensing is None:
            return None
        self._reporting = run.run_id
        try:
            s = self.sensing.sample_once(force=True)
        except Exception as exc:  # noqa: BLE001 - a failed read: the latest sample serves
            log.error("trough_sample_failed", run_id=run.run_id, error=repr(exc))
            s = None
        finally:
            self._reporting = None
        return s if s is not None else self.sensing.latest()

    def _learn_swing(self, run: Run, pkt, s) -> None:
        """The run's trough (the budget's use in sample s, taken at its safe
        point), the troughs' recent course, and its own per-step swing at this
        micro-batch, from the packet's RSS trough and peak (the larger of this
        step's and the mean with the last: one short step is no proof)."""
        comp = getattr(s, "components", None) or {}
        if "used" not in comp or "headroom_mb" not in comp or comp["used"] >= 1.0:
            return
        run.trough_used = float(comp["used"])
        run.troughs.push(self.ctx.clock.monotonic(), run.trough_used)
        if pkt.step_time_s > 0:
            run.step_s = float(pkt.step_time_s)
        budget = float(comp["headroom_mb"]) * MIB / (1.0 - run.trough_used)
        mem = pkt.memory
        if not (mem.HasField("peak_rss_bytes") and mem.rss_bytes and budget > 0):
            return
        micro = pkt.knobs.micro_batch_size
        swing = max(0, mem.peak_rss_bytes - mem.rss_bytes) / budget
        run.swings[micro] = learn(run.swings.get(micro), swing)

    def _breaker(self, run: Run, open_: bool, kind: str, why: str, stress: float) -> list[str]:
        """Open or close the run's circuit breaker: a circuit_breaker command, ledgered."""
        run.breaker_open, run.breaker_reason = open_, why
        run.breaker_kind = kind if open_ else ""
        run.breaker_since = self.ctx.clock.wall()
        if open_:
            run.breaker_opened_total += 1
        log.warning("circuit_breaker", run_id=run.run_id, open=open_, why=why)
        return self._issue(run, [("circuit_breaker", {"open": open_, "reason": why})], why, stress)

    def _check_breaker(self, run: Run, stress: float, now: float) -> list[str]:
        """Stress trigger: paused, and stress stayed >= pause_at for
        breaker_paused_s: the run cannot be kept alive by pausing; closed
        once stress fell below resume_below."""
        cfg = self.cfg
        paused = "pause" in run.ladder.names()
        if paused and stress >= cfg.pause_at:
            if run.critical_paused_since is None:
                run.critical_paused_since = now
        else:
            run.critical_paused_since = None
        if not run.breaker_open and cfg.breaker_paused_s > 0 and run.critical_paused_since is not None:
            held = now - run.critical_paused_since
            if held >= cfg.breaker_paused_s:
                return self._breaker(run, True, "stress", f"stress {stress:.3f} >= pause_at {cfg.pause_at:g} for "
                                     f"{held:.0f} s while paused (breaker_paused_s {cfg.breaker_paused_s:g})",
                                     stress)
        if run.breaker_open and run.breaker_kind == "stress" and stress < cfg.resume_below:
            return self._breaker(run, False, "stress", f"stress {stress:.3f} below resume_below "
                                 f"{cfg.resume_below:g}: circuit closed", stress)
        return []

    def _evaluate(self, run: Run, stress: float, now: float) -> list[str]:
        issued = self._check_breaker(run, stress, now)
        change = run.ladder.evaluate(stress, now, self._below(run))
        want = knobs_at(run.ladder.rungs, run.ladder.rung, run.base, self.cfg.lr_rule)
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
        elif not run.pending and run.reported is not None and run.reported_breaker != run.breaker_open \
                and now - run.last_issue >= self.cfg.reissue_s:
            issued += self._issue(run, [("circuit_breaker", {"open": run.breaker_open,
                                                             "reason": run.breaker_reason})],
                                  "reported circuit state differs: sent again", stress)
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
        r.add("train.telemetry", self.rpc_telemetry, params="TrainTelemetryParams", result="TrainTelemetryResult",
              access=Access.WRITE, example={"packet": {"training_run_id": "no-such-run", "health": "HEALTHY"}},
              example_error=E.NOT_FOUND)
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
        """HardwareContext from what sensing last read (no new sampling): the
        sample, the Reading behind it (NVML) and the latest fresh tegrastats
        line.  A figure nothing measured is left out, never sent as 0."""
        s = self.sensing.latest() if self.sensing is not None else None
        if s is None:
            return {}
        hw = {"stress": float(s.stress), "band": s.band, "model": s.model, "view": s.view,
              "trend_per_s": float(s.trend_per_s), "sample_timestamp": float(s.timestamp)}
        comp = s.components or {}
        if s.seconds_to_exhaustion is not None:
            hw["seconds_to_exhaustion"] = float(s.seconds_to_exhaustion)
        if "used" in comp:
            hw["used_fraction"] = float(comp["used"])
        if "headroom_mb" in comp:
            hw["headroom_bytes"] = max(0, int(round(float(comp["headroom_mb"]) * MIB)))
        for key, name in (("temp_c", "temperature_c"), ("thermal_margin_c", "thermal_margin_c"),
                          ("power_mw", "power_mw")):
            v = getattr(s, key, None)
            if v is not None:
                hw[name] = float(v)
        if s.thermal_sensor is not None:
            hw["thermal_sensor"] = s.thermal_sensor
        r = getattr(self.sensing, "last_reading", None)
        gpu = getattr(r, "gpu_mem", None) if r is not None else None
        if gpu is not None and gpu[1]:
            hw["gpu_memory_used_bytes"], hw["gpu_memory_total_bytes"] = int(gpu[0]), int(gpu[1])
            hw["unified_memory"] = False
        tg = self._tegra()
        if tg is not None:
            line, mode = tg
            hw["tegrastats_mode"] = mode
            hw["unified_memory"] = True
            ram = line.get("ram") or {}
            if "used_mb" in ram and "total_mb" in ram:
                hw["ram_used_bytes"] = int(ram["used_mb"]) * MIB
                hw["ram_total_bytes"] = int(ram["total_mb"]) * MIB
            g = line.get("gpu") or {}
            if "util_pct" in g:
                hw["gpu_load_percent"] = float(g["util_pct"])
            e = line.get("emc") or {}
            if "util_pct" in e:
                hw["emc_load_percent"] = float(e["util_pct"])
            temps = line.get("temps_c") or {}
            if temps:
                hw["temperatures_c"] = {k: float(v) for k, v in temps.items()}
            # Thermal and power of the same line (the sample may predate it).
            sc = thermal.scalars(line, self.ctx.config.signal.throttle_c)
            for key, name in (("temp_c", "temperature_c"), ("thermal_margin_c", "thermal_margin_c"),
                              ("power_mw", "power_mw"), ("thermal_sensor", "thermal_sensor")):
                if key in sc:
                    hw[name] = sc[key] if key == "thermal_sensor" else float(sc[key])
        return hw

    def _tegra(self) -> tuple[dict, str] | None:
        """(the latest tegrastats line, its mode) if read within three
        intervals (as sensing judges freshness), else None."""
        t = getattr(self.sensing, "tegra", None)
        if t is None or t.latest is None or t.last_read is None:
            return None
        if self.ctx.clock.monotonic() - t.last_read > 3 * self.ctx.config.sense.tegrastats_interval_ms / 1000:
            return None
        return t.latest, t.mode

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
        run.reported = Knobs(k.micro_batch_size, k.grad_accum_steps, k.activation_checkpointing, k.paused,
                             k.lr_scale or 1.0)
        run.reported_breaker = k.circuit_open
        if run.base is None:
            run.base = Knobs(k.base_micro_batch_size or k.micro_batch_size,
                             k.base_grad_accum_steps or k.grad_accum_steps)
            self._build_ladder(run)
        if not run.pending:
            run.assumed = run.reported
        s = self._trough_sample(run)
        self._learn_swing(run, pkt, s)
        issued = []
        loss = pkt.training_loss
        if self.cfg.breaker_nonfinite_loss and not math.isfinite(loss) and not run.breaker_open:
            issued += self._breaker(run, True, "loss", f"training loss {loss} at step {pkt.global_step} "
                                    f"is not finite", self._stress() or 0.0)
        elif run.breaker_open and run.breaker_kind == "loss" and math.isfinite(loss):
            issued += self._breaker(run, False, "loss", f"training loss {loss:.6g} at step {pkt.global_step} "
                                    f"is finite again: circuit closed", self._stress() or 0.0)
        if s is not None:
            self._expire(run)
            issued += self._evaluate(run, self._policy_stress(run, s), self.ctx.clock.monotonic())
        return {"run_id": run.run_id, "rung": run.ladder.rung, "issued": issued,
                "pending": len(run.pending), "hardware": run.last_state.get("hardware", {})}

    async def rpc_telemetry(self, p, call):
        """A TelemetryPacket: each metric kept as the series' latest value
        (bounded), events kept (bounded) and ledgered with a change of health."""
        pkt = _parse(p["packet"], train_pb2.TelemetryPacket, "packet")
        run = self._run_of(pkt.training_run_id, call)
        cap = self.cfg.telemetry_packet_max
        if len(pkt.metrics) > cap or len(pkt.events) > cap:
            raise invalid_params(f"packet carries {len(pkt.metrics)} metrics and {len(pkt.events)} events; "
                                 f"train.telemetry_packet_max is {cap} of each", param="packet",
                                 metrics=len(pkt.metrics), events=len(pkt.events))
        if pkt.health and pkt.health not in HEALTH:
            raise invalid_params(f"packet.health must be one of {', '.join(HEALTH)} or empty, got {pkt.health!r}",
                                 param="packet.health", got=pkt.health[:40])
        for i, m in enumerate(pkt.metrics):
            if not m.name:
                raise invalid_params(f"packet.metrics[{i}].name is empty", param=f"packet.metrics[{i}].name")
        for i, e in enumerate(pkt.events):
            if not e.name:
                raise invalid_params(f"packet.events[{i}].name is empty", param=f"packet.events[{i}].name")
        events = [_to_dict(e) for e in pkt.events]
        size = len(json.dumps(events, separators=(",", ":")))
        limit = self.ctx.config.ledger.max_entry_bytes // 2
        if size > limit:
            raise invalid_params(f"packet.events take {size} bytes; one ledger entry holds at most {limit} "
                                 f"of them (ledger.max_entry_bytes / 2): send them in several packets",
                                 param="packet.events", bytes=size, limit=limit)
        wall = self.ctx.clock.wall()
        run.telemetry_packets += 1
        self.telemetry_packets_total += 1
        run.last_telemetry_at = wall
        for m in pkt.metrics:
            key = (m.name, tuple(sorted(m.attributes.items())))
            run.metrics.pop(key, None)
            d = _to_dict(m)
            # 0.0 is omitted by the JSON mapping; NaN/Infinity stay its strings.
            d.setdefault("value", 0.0)
            run.metrics[key] = dict(d, updated_at=wall)
            while len(run.metrics) > self.cfg.telemetry_metrics:
                run.metrics.popitem(last=False)
        for e in events:
            run.events.append(e)
            while len(run.events) > self.cfg.telemetry_events:
                run.events.popleft()
        self.telemetry_events_total += len(events)
        changed = bool(pkt.health) and pkt.health != run.health
        was = run.health
        if changed:
            run.health, run.health_since = pkt.health, wall
            log.info("run_health", run_id=run.run_id, health=pkt.health, was=was or "-")
        index = 0
        if events or changed:
            entry = {"type": "train.telemetry", "run_id": run.run_id, "packet_id": pkt.packet_id,
                     "events": events}
            if changed:
                entry.update(health=pkt.health, previous_health=was)
            fut = self._record(entry)
            if fut is not None:
                index, _ = await fut
        return {"packet_id": pkt.packet_id, "metrics": len(pkt.metrics), "events": len(events),
                "health": run.health, "health_changed": changed, "ledger_index": index}

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
        self.field_reports_by_type[(_payload_type(run, rep.command_id, rec), outcome)] += 1
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
        cb = {"open": run.breaker_open, "opened_total": run.breaker_opened_total}
        if run.breaker_reason:
            cb["reason"] = run.breaker_reason
        if run.breaker_since is not None:
            cb["since"] = run.breaker_since
        out["circuit_breaker"] = cb
        tel = {"packets": run.telemetry_packets, "metrics": list(run.metrics.values()), "events": list(run.events)}
        if run.health:
            tel["health"] = run.health
            tel["health_since"] = run.health_since
        if run.last_telemetry_at is not None:
            tel["last_packet_at"] = run.last_telemetry_at
        out["telemetry"] = tel
        policy = {"own_swing_discounted_samples": run.discounted,
                  "own_swing": {str(k): round(v, 6) for k, v in sorted(run.swings.items())}}
        if run.trough_used is not None:
            policy["trough_used"] = round(run.trough_used, 6)
        slope, grow = self._grow(run)
        if slope is not None:
            policy["trough_slope_per_s"] = round(slope, 6)
            policy["ahead"] = round(grow, 6)
        out["policy"] = policy
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
                "telemetry_packets_total": self.telemetry_packets_total,
                "telemetry_events_total": self.telemetry_events_total,
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
            fam("aal_core_train_field_reports_total", "counter",
                "Field reports received, by the command's payload type and outcome.",
                [{"labels": {"type": t, "outcome": o}, "value": float(self.field_reports_by_type[(t, o)])}
                 for t in (*TYPE_OF, "unknown") for o in ("APPLIED", "REJECTED", "FAILED")]),
            fam("aal_core_train_rejections_total", "counter", "Commands clients refused, by reason.",
                [{"labels": {"reason": v.name}, "value": float(self.rejections[v.name])}
                 for v in train_pb2.RejectReason.DESCRIPTOR.values if v.number]),
            fam("aal_core_train_commands_expired_total", "counter",
                "Commands past their deadline without a field report.", [{"labels": {}, "value": float(self.expired_total)}]),
            fam("aal_core_train_run_rung", "gauge", "The policy ladder's rung of each run (0: as started).",
                [{"labels": {"run_id": r.run_id}, "value": float(r.ladder.rung if r.ladder else 0)}
                 for r in self.runs.values()]),
        ]
