"""OverlayUnit: the overlay bus on the socket.

`overlay.invoke` is a governed job: admitted by the governor's core like
`job.submit` (the capability's default profile unless overridden), run in a
cgroup of its own with the profile's HARD cap, confined for its phase by
sandbox.py, and recorded in the provenance log whose every record is
anchored in the ledger.  The registry (registry.py) holds the overlays;
runners.py runs them.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import platform
import time

from .. import __version__
from .. import errors as E
from ..errors import RpcError, invalid_params
from ..govern.governor import DEGRADATION_FIELDS
from ..log import get_logger
from ..rpc.registry import Access
from ..runes import format_profile, resolve
from ..units import Unit
from ..ledger.canonical import canonical
from . import provenance as prov
from .cgroup import CgroupPool
from .manifest import NAME, PHASES, ManifestError
from .registry import OverlayRegistry, source_dir
from .runners import Outcome, SpawnRefused, run_http, run_proc

from .sandbox import SandboxUnavailable, plan, plan_cache_clear, probe, spawn

log = get_logger("overlays")

MB = 1 << 20
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OUTCOME_NAMES = {
    E.OVERLAY_PHASE_REFUSED: "phase_refused", E.OVERLAY_TIMEOUT: "timeout", E.OVERLAY_CRASHED: "crashed",
    E.OVERLAY_BAD_OUTPUT: "bad_output", E.OVERLAY_DISABLED: "disabled", E.OVERLAY_CONFINEMENT: "confinement",
    E.OVERLAY_UNREACHABLE: "unreachable", E.ADMISSION_REFUSED: "admission_refused",
    E.QUARANTINED: "admission_refused", E.CONFLICT: "admission_refused",
}


class Stages:
    """Per-call stage timestamps, kept only when AAL_OVERLAY_STAGES names a
    file (bench/overlays.py --stages): one JSON line per call of
    {stage: ms since the previous mark}.  Off, `mark` is a no-op."""

    __slots__ = ("t", "out")

    def __init__(self, on: bool):
        self.t = [("start", time.perf_counter())] if on else None
        self.out: dict = {}

    def mark(self, name: str) -> None:
        if self.t is not None:
            self.t.append((name, time.perf_counter()))

    def line(self) -> bytes:
        d, prev = {}, self.t[0][1]
        for name, t in self.t[1:]:
            d[name] = round(d.get(name, 0.0) + (t - prev) * 1000, 4)
            prev = t
        d["total"] = round((self.t[-1][1] - self.t[0][1]) * 1000, 4)
        d.update(self.out)
        return json.dumps(d).encode() + b"\n"


_PROFILES: dict = {}


def _resolve(text: str):
    """resolve() of a profile text, remembered (~25 us a parse; a few
    hundred distinct texts at most: the manifests' defaults and overrides)."""
    hit = _PROFILES.get(text)
    if hit is None:
        hit = resolve(text)[1]
        if len(_PROFILES) >= 256:
            _PROFILES.clear()
        _PROFILES[text] = hit
    return hit


def _payload_logging(cfg) -> bool:
    return bool(cfg.log_payload) or os.environ.get("AAL_DEV_LOG_PAYLOAD") == "1"


def environment(git_commit: str | None) -> dict:
    env = {"aal_core": __version__, "python": platform.python_version(),
           "platform": f"{platform.system()}-{platform.release()}-{platform.machine()}"}
    if git_commit:
        env["overlay_git_commit"] = git_commit
    return env


class OverlayUnit(Unit):
    name = "overlays"

    def __init__(self, ctx, governor=None, ledger=None, keys=None):
        super().__init__(ctx)
        self.governor = governor
        self.ledger = ledger
        self.keys = keys
        cfg = ctx.config.overlays
        self.cfg = cfg
        self.registry = OverlayRegistry(cfg.dir, ctx.state_dir, allow_tcp=cfg.allow_tcp_loopback,
                                        allow_remote=cfg.allow_remote_http)
        self.log = prov.ProvenanceLog(os.path.join(ctx.state_dir, cfg.provenance_file),
                                      max_bytes=cfg.provenance_max_bytes, keep=cfg.provenance_keep)
        self.mechanisms = None
        self._write_lock = asyncio.Lock()
        self._pending: set = set()          # ledger appends of records not yet committed
        self._cleanups: set = set()         # scratch directories being removed
        self._ids = itertools.count(1)
        self.running = 0
        self.calls_total = 0
        self.log_payload = _payload_logging(cfg)
        # metrics: (overlay, outcome) -> count; overlay -> [bucket counts..., sum, count]
        self.calls: dict[tuple[str, str, str], int] = {}
        self.durations: dict[str, list] = {}
        self._opened = False
        self.cgroups = CgroupPool(getattr(governor, "enforcer", None))
        self._stages_fd: int | None = None      # AAL_OVERLAY_STAGES: per-stage timings (debug)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.mechanisms = await loop.run_in_executor(None, probe, self.cfg)
        if os.environ.get("AAL_OVERLAY_STAGES"):
            self._stages_fd = os.open(os.environ["AAL_OVERLAY_STAGES"],
                                      os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        await loop.run_in_executor(None, self.log.open)
        if self.log.torn:
            log.warning("provenance_torn_line", path=self.log.path, bytes=self.log.torn,
                        kept=self.log.path + ".torn")
        self._opened = True
        self.cgroups.sweep()
        self.registry.load_state()
        self.registry.clean_trash()
        self.registry.rescan()
        await self._anchor_unanchored()
        log.info("started", dir=self.cfg.dir, overlays=len(self.registry.entries),
                 provenance=self.log.count, log_payload=self.log_payload,
                 confinement=str(self._mech_dict().get("mechanism", "?")))

    async def _anchor_unanchored(self) -> None:
        """Records written before a crash whose ledger entry was not: anchor them now."""
        if self.ledger is None or self.ledger.ledger is None or not self.log.count:
            return
        anchored = 0
        async for chunk in self._ledger_chunks():
            anchored += len(prov.anchors_from_entries(chunk))
        missing = range(max(anchored, self.log.pruned_before), self.log.count)
        for i in range(0, len(missing), 1000):     # submitted 1000 at a time: group commits, in order
            futs = []
            for seq in missing[i:i + 1000]:
                line = self.log.read_line(seq)
                rid = prov._run_id(line)
                futs.append(self.ledger.append({"type": prov.LEDGER_TYPE, "seq": seq,
                                                "run_id": rid if isinstance(rid, str) else "",
                                                "record_hash": prov.record_hash(line)}))
            await asyncio.gather(*futs)
        if missing:
            log.warning("provenance_anchored_after_crash", records=len(missing), first=missing[0])

    async def _ledger_chunks(self, size: int = 1000, end: int | None = None):
        """The ledger's entries (up to `end`) in chunks, yielding to the loop between them."""
        led = self.ledger.ledger
        i, n = 0, led.count if end is None else end
        while i < n:
            yield led.entries(i, min(n, i + size))
            i += size
            await asyncio.sleep(0)

    async def stop(self) -> None:
        await asyncio.sleep(0)       # cleanups scheduled with call_soon are started
        if self._cleanups:
            await asyncio.wait(list(self._cleanups), timeout=10.0)
        self.cgroups.close()
        self.log.close()

    def reload(self, config) -> None:
        super().reload(config)
        cfg = config.overlays
        self.cfg = cfg
        self.log_payload = _payload_logging(cfg)
        r = self.registry
        r.allow_tcp, r.allow_remote = cfg.allow_tcp_loopback, cfg.allow_remote_http
        if cfg.dir != r.dir:
            r.dir = cfg.dir
        plan_cache_clear()  # CLEAR's read rules are made again (a read path may have come or gone)
        r.rescan()          # hot swap on SIGHUP / system.reload

    def _mech_dict(self) -> dict:
        try:
            return self.mechanisms.to_dict(self.cfg) if self.mechanisms is not None else {}
        except Exception:  # noqa: BLE001
            return {}

    def status(self) -> dict:
        entries = self.registry.entries.values()
        return {"overlays": {
            "dir": self.registry.dir, "installed": len(self.registry.entries),
            "enabled": sum(1 for e in entries if e.enabled), "broken": sum(1 for e in entries if e.problems),
            "running": self.running, "calls_total": self.calls_total, "provenance_records": self.log.count,
            "provenance_segments": len(self.log.segments), "provenance_first": self.log.pruned_before,
            "log_payload": self.log_payload, "provenance_file": self.log.path,
            "confinement": self._mech_dict(), "hot_swap": "rescan", "torn_bytes": self.log.torn}}

    def summary(self) -> str:
        return f"{len(self.registry.entries)} overlays" + (f", {self.running} running" if self.running else "")

    # --------------------------------------------------------------- metrics

    def metrics(self) -> list[dict]:
        calls = [{"labels": {"overlay": o, "capability": c, "outcome": oc}, "value": float(n)}
                 for (o, c, oc), n in sorted(self.calls.items())]
        hist = []
        for o, (counts, total, n) in sorted(self.durations.items()):
            cum, buckets = 0, []
            for b, c in zip(DURATION_BUCKETS, counts):
                cum += c
                buckets.append([b, cum])
            buckets.append(["+Inf", n])
            hist.append({"labels": {"overlay": o}, "value": {"buckets": buckets, "sum": total, "count": n}})
        return [
            {"name": "aal_core_overlay_calls_total", "type": "counter",
             "help": "overlay.invoke calls by overlay, capability and outcome", "samples": calls},
            {"name": "aal_core_overlay_call_duration_seconds", "type": "histogram",
             "help": "Duration of overlay calls that ran (spawn to result)", "samples": hist},
            {"name": "aal_core_overlay_running", "type": "gauge", "help": "overlay calls running now",
             "samples": [{"labels": {}, "value": float(self.running)}]},
            {"name": "aal_core_provenance_records", "type": "gauge", "help": "records in the provenance log",
             "samples": [{"labels": {}, "value": float(self.log.count)}]},
        ]

    def _count(self, overlay: str, capability: str, outcome: str, duration_s: float | None) -> None:
        key = (overlay, capability, outcome)     # bounded: capabilities come from installed manifests
        self.calls[key] = self.calls.get(key, 0) + 1
        if duration_s is not None:
            h = self.durations.setdefault(overlay, [[0] * len(DURATION_BUCKETS), 0.0, 0])
            for i, b in enumerate(DURATION_BUCKETS):
                if duration_s <= b:
                    h[0][i] += 1
                    break
            h[1] += duration_s
            h[2] += 1

    # ------------------------------------------------------------------ RPC

    def register(self, registry) -> None:
        r = registry
        r.add("overlay.list", self.rpc_list, result="OverlayListResult",
              summary="Every overlay in overlays.dir: enabled, valid (or its problems), version, capabilities.")
        r.add("overlay.get", self.rpc_get, params="OverlayNameParams", result="OverlayInfo",
              example={"name": "no-such-overlay"}, example_error=E.NOT_FOUND)
        r.add("overlay.install", self.rpc_install, params="OverlayInstallParams", result="OverlayInstallResult",
              access=Access.ADMIN, example={"path": "/nonexistent/overlay"}, example_error=E.OVERLAY_INVALID)
        r.add("overlay.enable", self.rpc_enable, params="OverlayNameParams", result="OverlayStateResult",
              access=Access.ADMIN, example={"name": "no-such-overlay"}, example_error=E.NOT_FOUND)
        r.add("overlay.disable", self.rpc_disable, params="OverlayNameParams", result="OverlayStateResult",
              access=Access.ADMIN, example={"name": "no-such-overlay"}, example_error=E.NOT_FOUND)
        r.add("overlay.remove", self.rpc_remove, params="OverlayNameParams", result="OverlayRemoveResult",
              access=Access.ADMIN, example={"name": "no-such-overlay"}, example_error=E.NOT_FOUND)
        r.add("overlay.rescan", self.rpc_rescan, result="OverlayRescanResult", access=Access.ADMIN,
              summary="Re-read overlays.dir now (hot swap; system.reload and SIGHUP do it too).")
        r.add("overlay.invoke", self.rpc_invoke, params="OverlayInvokeParams", result="OverlayInvokeResult",
              access=Access.WRITE,
              example={"overlay": "no-such-overlay", "capability": "scan", "phase": "OPEN", "payload": {}},
              example_error=E.NOT_FOUND)
        r.add("provenance.get", self.rpc_prov_get, params="ProvenanceGetParams", result="ProvenanceGetResult",
              example={"run_id": "no-such-run"}, example_error=E.NOT_FOUND)
        r.add("provenance.list", self.rpc_prov_list, params="ProvenanceListParams",
              result="ProvenanceListResult", example={"limit": 10})
        r.add("provenance.verify", self.rpc_prov_verify, result="ProvenanceVerifyResult",
              summary="Check every provenance record against its ledger entry; names the first bad one.")

    def _entry(self, name: str):
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise invalid_params("an overlay name is 1-64 characters of a-z 0-9 _ -", param="name",
                                 got=str(name)[:80])
        e = self.registry.get(name)
        if e is None:
            raise E.not_found(f"no overlay {name!r} in {self.registry.dir}", overlay=name)
        return e

    def rpc_list(self, p, call):
        """Every overlay in overlays.dir."""
        return {"overlays": [e.to_dict() for e in self.registry.entries.values()], "dir": self.registry.dir}

    def rpc_get(self, p, call):
        """One overlay: its manifest summary, state and problems."""
        return self._entry(p["name"]).to_dict()

    def rpc_install(self, p, call):
        """Install the overlay directory at `path` (validated, copied into overlays.dir)."""
        enable = p.get("enable", True)
        try:
            before = None
            try:
                from .manifest import load
                name = load(source_dir(p["path"]), check_dirname=False, allow_tcp=self.cfg.allow_tcp_loopback,
                            allow_remote=self.cfg.allow_remote_http).name
                before = self.registry.get(name)
            except ManifestError:
                pass
            e = self.registry.install(p["path"], enable=enable)
        except ManifestError as exc:
            raise RpcError(E.OVERLAY_INVALID, str(exc), {"problems": exc.problems}) from None
        except OSError as exc:
            raise RpcError(E.OVERLAY_INVALID, f"cannot install {p['path']}: {exc.strerror or exc}",
                           {"path": p["path"]}) from None
        if e.manifest is None:
            raise RpcError(E.OVERLAY_INVALID, e.problems[0] if e.problems else "invalid",
                           {"problems": list(e.problems)})
        out = {"name": e.name, "version": e.manifest.version, "enabled": e.enabled,
               "upgraded": before is not None}
        if before is not None and before.manifest is not None:
            out["previous_version"] = before.manifest.version
        log.info("overlay_installed", overlay=e.name, version=e.manifest.version, enabled=e.enabled,
                 upgraded=before is not None)
        return out

    def _set(self, name, on):
        e = self._entry(name)
        e = self.registry.set_enabled(e.name, on)
        log.info("overlay_enabled" if on else "overlay_disabled", overlay=name)
        out = {"name": e.name, "enabled": e.enabled}
        if e.manifest is not None:
            out["version"] = e.manifest.version
        return out

    def rpc_enable(self, p, call):
        """Enable an overlay (takes effect for the next call)."""
        return self._set(p["name"], True)

    def rpc_disable(self, p, call):
        """Disable an overlay (a running call finishes)."""
        return self._set(p["name"], False)

    def rpc_remove(self, p, call):
        """Remove an installed overlay's directory (a running call finishes on it)."""
        e = self._entry(p["name"])
        self.registry.remove(e.name)
        log.info("overlay_removed", overlay=e.name)
        return {"name": e.name, "removed": True}

    def rpc_rescan(self, p, call):
        """Re-read overlays.dir now."""
        plan_cache_clear()
        return self.registry.rescan()

    # --------------------------------------------------------------- invoke

    async def rpc_invoke(self, p, call):
        """Run one capability of an overlay in a phase, as a governed job; recorded in provenance."""
        st = Stages(self._stages_fd is not None)
        entry = self._entry(p["overlay"])
        phase = p["phase"]
        if phase not in PHASES:
            raise invalid_params(f"phase must be one of {', '.join(PHASES)}", param="phase", got=str(phase)[:40])
        m = entry.manifest
        cap_name = p["capability"]
        cap = m.capabilities.get(cap_name) if m is not None else None
        if m is not None and cap is None:
            raise RpcError(E.OVERLAY_UNKNOWN_CAPABILITY,
                           f"overlay {entry.name!r} has no capability {cap_name!r} "
                           f"(has: {', '.join(sorted(m.capabilities))})",
                           {"overlay": entry.name, "capability": cap_name, "known": sorted(m.capabilities)})
        payload = p.get("payload")
        seed = p.get("seed")
        if seed is not None and not isinstance(seed, (str, int)) or isinstance(seed, bool):
            raise invalid_params("seed must be a string or an integer", param="seed")
        profile_text = p.get("profile") or (cap.default_profile if cap else "MINIMAL")
        profile = _resolve(profile_text)             # ParseError -> -32602 with line/column
        try:
            canonical(payload)
        except Exception as exc:  # noqa: BLE001 - EntryError: NaN, huge ints
            raise invalid_params(f"payload cannot be canonical JSON: {exc}", param="payload") from None
        entry.users.append(1)
        self.running += 1
        try:
            return await self._invoke(entry, cap, cap_name, phase, payload, seed, profile_text, profile, st)
        finally:
            self.running -= 1
            entry.users.pop()
            self.registry.reap()
            if st.t is not None:
                st.mark("reply")
                try:
                    os.write(self._stages_fd, st.line())
                except OSError:
                    pass

    async def _invoke(self, entry, cap, cap_name, phase, payload, seed, profile_text, profile, st):
        m = entry.manifest
        version = m.version if m is not None else ""
        rid = prov.run_id(entry.name, version, cap_name, phase, payload, seed)
        started = self.ctx.clock.wall()
        rec = {"schema": prov.SCHEMA, "type": "overlay.call", "run_id": rid, "overlay": entry.name,
               "version": version, "capability": cap_name, "phase": phase,
               "profile": format_profile(profile), "payload_hash": prov.sha256_json(payload),
               "manifest_hash": m.manifest_hash if m is not None else "",
               "env": environment(entry.git_commit), "started_at": started,
               "deterministic": bool(m and m.deterministic)}
        if seed is not None:
            rec["seed"] = seed
        if self.log_payload:
            rec["payload"] = payload
        refusal = self._policy(entry, cap, phase)
        st.mark("validate")
        defer: list = []
        try:
            return await self._invoke_rest(entry, cap, cap_name, phase, payload, seed, profile_text, profile, st,
                                           rec, rid, refusal, version, started, defer)
        finally:
            for release in defer:      # not run yet: _record failed before its fsync
                release()
            defer.clear()

    async def _invoke_rest(self, entry, cap, cap_name, phase, payload, seed, profile_text, profile, st, rec, rid,
                           refusal, version, started, defer):
        degradation: dict = {}
        ran = False
        if refusal is not None:
            outcome = refusal
        else:
            outcome, degradation, extra = await self._governed(entry, cap, phase, payload, rid, profile_text,
                                                               profile, st, defer)
            rec.update(extra)
            ran = "confinement" in extra
        ended = self.ctx.clock.wall()
        rec["degradation"] = degradation
        rec["ended_at"] = ended
        duration_ms = round(outcome.info.get("duration_ms", (ended - started) * 1000), 3)
        rec["duration_ms"] = duration_ms
        rec["outcome"] = "ok" if outcome.ok else OUTCOME_NAMES.get(outcome.error["code"], "error")
        if outcome.ok:
            rec["result_hash"] = prov.sha256_json(outcome.result)
        else:
            rec["result_hash"] = prov.sha256_json({"error": {"code": outcome.error["code"]}})
            rec["error"] = {"code": outcome.error["code"], "message": outcome.error["message"][:500]}
        for k in ("exit_status", "signal", "http_status", "attempts", "oom_killed"):
            if k in outcome.info:
                rec[k] = outcome.info[k]
        st.mark("result_hash")
        seq, ledger_index = await self._record(rec, st, defer)
        self.calls_total += 1
        self._count(entry.name, cap_name, rec["outcome"], duration_ms / 1000 if ran else None)
        out = {"ok": outcome.ok, "run_id": rid, "provenance_index": seq, "duration_ms": duration_ms,
               "overlay": entry.name, "version": version, "capability": cap_name, "phase": phase,
               "result_hash": rec["result_hash"]}
        if ledger_index is not None:
            out["ledger_index"] = ledger_index
        if outcome.ok:
            out["result"] = outcome.result
        else:
            out["error"] = outcome.error
        log.info("overlay_call", overlay=entry.name, capability=cap_name, phase=phase, run_id=rid[:16],
                 outcome=rec["outcome"], ms=duration_ms, seq=seq)
        return out

    def _policy(self, entry, cap, phase) -> Outcome | None:
        """Refusals decided before anything runs."""
        m = entry.manifest
        if m is None:
            return Outcome.fail(E.OVERLAY_DISABLED, f"overlay {entry.name!r} cannot be used: {entry.problems[0]}",
                                problems=list(entry.problems))
        if not entry.enabled:
            return Outcome.fail(E.OVERLAY_DISABLED, f"overlay {entry.name!r} is disabled (overlay.enable)")
        if phase not in m.phases:
            return Outcome.fail(E.OVERLAY_PHASE_REFUSED,
                                f"overlay {entry.name!r} does not declare phase {phase} "
                                f"(declares {', '.join(m.phases)})", phase=phase, declared=list(m.phases))
        if phase == "ASCEND" and cap.cls != "exec":
            return Outcome.fail(E.OVERLAY_PHASE_REFUSED,
                                f"ASCEND runs only capabilities of class exec; {cap.name!r} is {cap.cls}",
                                phase=phase, **{"class": cap.cls})
        if phase == "CLEAR" and cap.cls != "analysis":
            return Outcome.fail(E.OVERLAY_PHASE_REFUSED,
                                f"CLEAR admits only capabilities of class analysis; {cap.name!r} is {cap.cls}",
                                phase=phase, **{"class": cap.cls})
        if phase not in cap.phases:
            return Outcome.fail(E.OVERLAY_PHASE_REFUSED,
                                f"capability {cap.name!r} does not run in {phase} (runs in {', '.join(cap.phases)})",
                                phase=phase, declared=list(cap.phases))
        if phase == "CLEAR" and cap.runner == "http" and not self.cfg.allow_unconfined:
            return Outcome.fail(E.OVERLAY_CONFINEMENT,
                                "CLEAR is enforced by confining the overlay's process; an http overlay's "
                                "process is not the daemon's to confine (overlays.allow_unconfined)",
                                phase=phase, runner="http")
        return None

    async def _governed(self, entry, cap, phase, payload, rid, profile_text, profile, st, defer=None):
        """`defer`: where the release of what the call took (its cgroup, job,
        scratch directory) goes when the run finished; _record runs it while
        the provenance line's fsync is in flight, before the reply."""
        """Admission, cgroup, confinement, the run; always releases what it took."""
        extra: dict = {}
        gov = self.governor
        job_id = f"overlay-{next(self._ids)}-{rid[:12]}"
        job = None
        if gov is not None:
            try:
                job = gov.core.submit(job_id, profile_text, {"overlay": entry.name, "capability": cap.name,
                                                            "phase": phase, "run_id": rid})
            except RpcError as exc:
                return Outcome.fail(exc.code, exc.message, **(exc.data or {})), {}, extra
            meta = job.metadata()
            degradation = {k: meta[k] for k in DEGRADATION_FIELDS if k in meta}
        else:
            degradation = {}
        st.mark("admission")
        if cap.max_fraction is not None:
            degradation["max_fraction"] = cap.max_fraction
        if cap.disable_nonessential and degradation.get("degraded"):
            degradation["disable_nonessential"] = True
        cg = conf = None
        beat = None
        ok = False
        try:
            if cap.runner == "proc":
                try:
                    conf = plan(phase=phase, cap_class=cap.cls, network=False, mechanisms=self.mechanisms,
                                config=self.cfg)
                except SandboxUnavailable as exc:
                    return (Outcome.fail(E.OVERLAY_CONFINEMENT, f"{phase} refused, not run unconfined: {exc}",
                                         phase=phase, confinement=self._mech_dict()), degradation, extra)
                extra["confinement"] = _conf_dict(conf)
                st.mark("confine_plan")
                cg = self.cgroups.acquire(profile.mem.soft_mb * MB, profile.mem.hard_mb * MB)
                extra["cgroup"] = cg.to_dict()
                if job is not None:
                    job.enforcement = extra["cgroup"]
                    beat = asyncio.ensure_future(self._heartbeat(job_id))
                st.mark("cgroup")
            else:
                extra["confinement"] = {"mechanism": "none", "runner": "http"}
            request = canonical({"phase": phase, "capability": cap.name, "payload": payload,
                                 "degradation": degradation, "run_id": rid})
            if cap.runner == "proc":
                outcome = await self._run_proc(entry, cap, conf, cg, request, rid, phase, st)
            else:
                outcome = await run_http(entry.manifest, cap, request, timeout_s=cap.timeout_s,
                                         max_bytes=self.cfg.max_output_bytes, retries=self.cfg.http_retries,
                                         backoff_s=self.cfg.http_backoff_s)
            st.mark("run")
            ok = True
            return outcome, degradation, extra
        finally:
            def release():
                if beat is not None:
                    beat.cancel()
                if cg is not None:
                    self.cgroups.release(cg)
                if conf is not None:     # after the reply is written (the next loop turn)
                    asyncio.get_running_loop().call_soon(self._cleanup_later, conf)
                if job is not None and gov.core.jobs.get(job_id) is job:
                    gov.core.release(job_id)
            if ok and defer is not None:
                defer.append(release)     # run while the provenance line is fsynced (_record)
            else:
                release()
                st.mark("release")

    def _cleanup_later(self, conf) -> None:
        """Remove the call's scratch directory off the reply's path (an rmdir
        waits for the file system's journal: ~1 ms on a busy disk); stop()
        waits for what is left."""
        fut = asyncio.get_running_loop().run_in_executor(None, conf.cleanup)
        self._cleanups.add(fut)

        def done(f, path=conf.scratch_dir):
            self._cleanups.discard(f)
            if f.cancelled():
                return
            if f.exception() is not None or not f.result():
                log.error("confinement_cleanup_failed", scratch=path,
                          error=repr(f.exception()) if f.exception() is not None else "not removed")
        fut.add_done_callback(done)

    async def _heartbeat(self, job_id: str) -> None:
        every = max(0.05, self.governor.core.cfg.heartbeat_timeout_s / 3)
        while True:
            await asyncio.sleep(every)
            if job_id in self.governor.core.jobs:
                self.governor.core.heartbeat(job_id)

    async def _run_proc(self, entry, cap, conf, cg, request, rid, phase, st) -> Outcome:
        m = entry.manifest
        where = entry.where
        argv = list(m.command)
        if "/" in argv[0]:
            argv[0] = os.path.join(where, argv[0])
        if cap.path:
            argv.append(os.path.join(where, cap.path))
        env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "HOME": getattr(conf, "scratch_dir", None) or where,
               "TMPDIR": getattr(conf, "scratch_dir", None) or "/tmp",
               "PYTHONDONTWRITEBYTECODE": "1",
               "AAL_OVERLAY_RUN_ID": rid, "AAL_OVERLAY_PHASE": phase, "AAL_OVERLAY_CAPABILITY": cap.name}

        async def _spawn(argv):
            st.mark("request")
            try:
                return await spawn(argv, conf, env=env, cwd=where, cgroup_procs=cg.procs if cg else None)
            except SandboxUnavailable as exc:      # ConfinementFailed: the child could not apply it
                raise SpawnRefused(E.OVERLAY_CONFINEMENT, f"{phase} not run: {exc}") from None
            finally:
                st.mark("spawn")

        outcome = await run_proc(_spawn, argv, request, timeout_s=cap.timeout_s,
                                 max_stdout=self.cfg.max_output_bytes, max_stderr=self.cfg.max_stderr_bytes,
                                 kill_leftovers=cg.kill_all if cg else None)
        if not outcome.ok and cg is not None and cg.oom_killed():
            outcome.info["oom_killed"] = True
            outcome.error = {"code": E.OVERLAY_CRASHED,
                             "message": f"killed in its cgroup for exceeding its HARD cap "
                                        f"({cg.hard_bytes // MB} MiB)",
                             "data": dict(outcome.error.get("data", {}), oom_killed=True)}
        return outcome

    async def _record(self, rec: dict, st=None, defer=None) -> tuple[int, int | None]:
        """Append the record (fsynced), then submit its hash to the ledger, in
        log order (one writer at a time).  The reply does not wait for the
        ledger's fsync: the record is durable already, and a record whose
        anchor a crash lost is anchored at the next start (provenance.verify
        waits for the anchors in flight)."""
        loop = asyncio.get_running_loop()
        async with self._write_lock:
            if st is not None:
                st.mark("prov_lock")
            try:
                seq, line = self.log.prepare(rec)
                fut = loop.run_in_executor(None, self.log.write, line)
                if defer:                # the call's release, meanwhile (it needs nothing of the record)
                    for release in defer:
                        release()
                    defer.clear()
                    if st is not None:
                        st.mark("release")
                await fut
                h = self.log.commit(seq, line, rec["run_id"])
            except OSError as exc:
                raise RpcError(E.PROVENANCE_ERROR, f"cannot write the provenance log {self.log.path}: "
                                                   f"{exc.strerror}", {"run_id": rec["run_id"]}) from None
            if self.log.size >= self.log.max_bytes > 0:
                try:
                    pruned = await loop.run_in_executor(None, self.log.rotate_if_full)
                except OSError as exc:      # the record is written; rotation is retried at the next one
                    log.error("provenance_rotate_failed", path=self.log.path, error=str(exc))
                    pruned = []
                log.info("provenance_rotated", path=self.log.path, first=self.log.first, pruned=pruned)
                if pruned and self.ledger is not None:
                    try:
                        self.ledger.append({"type": prov.PRUNE_TYPE, "before": self.log.pruned_before,
                                            "segments": pruned})
                    except Exception as exc:  # noqa: BLE001
                        log.error("provenance_prune_anchor_failed", error=repr(exc))
            if st is not None:
                st.mark("prov_append")
                st.out["prov_fsync_of_append"] = round(self.log.last_fsync_s * 1000, 4)
            fut = None
            if self.ledger is not None:
                try:
                    fut = self.ledger.append({"type": prov.LEDGER_TYPE, "seq": seq, "run_id": rec["run_id"],
                                              "record_hash": h})
                    self._pending.add(fut)
                    fut.add_done_callback(self._pending.discard)
                except Exception as exc:  # noqa: BLE001 - anchored at the next start
                    log.error("provenance_anchor_failed", seq=seq, error=repr(exc))
            if st is not None:
                st.mark("ledger_submit")
        if fut is None:
            return seq, None
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            return seq, fut.result()[0]

        def anchored(f, seq=seq):
            if not f.cancelled() and f.exception() is not None:
                log.error("provenance_anchor_failed", seq=seq, error=repr(f.exception()),
                          effect="anchored at the next start")
        fut.add_done_callback(anchored)
        return seq, None

    # ----------------------------------------------------------- provenance

    async def rpc_prov_get(self, p, call):
        """A provenance record by run_id (the first with it) or by line."""
        loop = asyncio.get_running_loop()
        async with self._write_lock:          # no rotation while the files are read
            if "index" in p:
                seq = p["index"]
                if not 0 <= seq < self.log.count:
                    raise E.not_found(f"no provenance record {seq} (the log has {self.log.count})", index=seq)
                if not self.log.has(seq):
                    raise E.not_found(f"provenance record {seq} was deleted with its segment (overlays."
                                      f"provenance_keep; the log begins at {self.log.pruned_before})", index=seq)
                rec = self.log.get(seq)
                rid = rec.get("run_id")
                seqs = await loop.run_in_executor(None, self.log.find_run, rid) if isinstance(rid, str) else [seq]
            elif "run_id" in p:
                seqs = await loop.run_in_executor(None, self.log.find_run, p["run_id"])
                if not seqs:
                    raise E.not_found(f"no provenance record with run_id {p['run_id']!r}", run_id=p["run_id"])
                seq = seqs[0]
                rec = self.log.get(seq)
            else:
                raise invalid_params("give run_id or index", missing=["run_id"])
        return {"record": rec, "index": seq, "same_run_id": len(seqs), "indexes": seqs[:1000]}

    async def rpc_prov_list(self, p, call):
        """Provenance records in log order (the last `limit` by default, of `overlay` if given)."""
        limit = min(int(p.get("limit", 100)), 1000)
        loop = asyncio.get_running_loop()
        async with self._write_lock:
            out = await loop.run_in_executor(None, self.log.latest, limit, p.get("overlay"), p.get("start"))
        return {"records": out, "total": self.log.count}

    async def rpc_prov_verify(self, p, call):
        """Check every record on disk against its ledger entry, in order, in
        chunks, up to the records committed when it began: invokes go on
        meanwhile (the lock is held only to take the snapshot)."""
        if self.ledger is None or self.ledger.ledger is None:
            raise RpcError(E.LEDGER_ERROR, "the ledger is not open")
        async with self._write_lock:     # a snapshot with every record anchored (or known unanchored)
            if self._pending:
                await asyncio.wait(list(self._pending), timeout=10.0)
            snap = self.log.snapshot()
            end = self.log.count
            first = self.log.pruned_before
            ledger_end = self.ledger.ledger.count
        try:
            start = 0
            async for chunk in self._ledger_chunks(end=ledger_end):
                start = max(start, prov.pruned_from_entries(chunk))
            v = prov.Verifier(start)
            lines = (line for _, line in prov.snapshot_lines(snap, first))
            anchors = self._ledger_chunks(end=ledger_end)
            while not (v.lines_done and v.anchors_done):
                if not v.anchors_done and len(v.anchors) < 3 * v.window:
                    try:
                        v.feed_anchors(prov.anchors_from_entries(await anchors.__anext__()))
                    except StopAsyncIteration:
                        v.anchors_done = True
                if not v.lines_done and len(v.lines) < v.window:
                    batch = list(itertools.islice(lines, 2000))
                    v.feed_lines(batch)
                    if not batch:
                        v.lines_done = True
                if v.run():
                    break
                await asyncio.sleep(0)
            out = v.finish()
        finally:
            prov.close_snapshot(snap)
        out["records"] = end - first
        out["torn_bytes"] = self.log.torn
        return out


def _conf_dict(conf) -> dict:
    try:
        return conf.to_dict()
    except Exception:  # noqa: BLE001
        return {"mechanism": str(getattr(conf, "mechanism", "?"))}
