"""SensingUnit: samples the memory sources, runs the model, publishes.

The loop reads meminfo (and PSI, vmstat, the watched cgroup) at
sense.sample_hz, faster (sense.sample_hz_max) while the band is HIGH or
worse or memory would run out within a minute, earlyoom-style, and slower
(sense.sample_hz_idle) while the band is LOW and nobody is there to act for
or to watch (no client connected, no job, no training run: the `idle_check`
app.py sets); `busy()` brings the base rate back at once.  Each sample
is encoded once; stress.get and the "stress" topic reuse those bytes.
tegrastats runs beside it at its own interval; its latest line feeds the
fused model (lfb) when the source is live, and the thermal/power scalars.

For the other units: latest(), add_listener(fn), anomaly_counters().
"""
from __future__ import annotations

import collections
import dataclasses
import os
from typing import Callable

from .. import errors as E
from ..errors import RpcError, SourceError, invalid_params
from ..log import get_logger
from ..rpc import codec
from ..sources import _health
from ..sources.cgroup import CgroupReader
from ..sources.meminfo import MeminfoReader
from ..sources.nvml import NvmlReader
from ..sources.psi import PsiReader
from ..sources.tegrastats import TegrastatsSource
from ..sources.vmstat import VmstatReader
from ..tasks import Ticker
from ..units import Unit
from . import metrics as _metrics, thermal
from .classic import ClassicModel
from .fused import FusedModel
from .sample import BAND_ORDER, Reading, StressSample

log = get_logger("sense")

MODELS = {"classic": ClassicModel, "fused": FusedModel}
THERMAL_WARN_MARGIN_C = 10.0
FAST_TTE_S = 60.0
# /proc/vmstat (4 KB, ~10 us of kernel time a read) is only the OOM-kill
# counter: at the base rate it is read once a second, not every sample
# (the control loop reads the counters once a beat, 1 s); at the fast rate
# (HIGH or worse, or under a minute to exhaustion) on every sample.
VMSTAT_INTERVAL_S = 1.0


class _Source:
    """A reader, how to (re)open it, and its bookkeeping for sense.sources.

    A read that fails closes the reader (a removed cgroup's kept-open files
    answer ENODEV forever, even once one of the same name is created again)
    and the source is absent; `read()` reopens it through `factory` when
    the backoff allows (sources._health), so it comes back by itself."""

    def __init__(self, name: str, path: str, factory, clock, expected: bool = True,
                 retry_max_s: float = _health.MAX_S):
        self.name, self.path, self.factory, self.clock = name, path, factory, clock
        self.reader = None
        self.reads = self.errors = 0
        self.last_read: float | None = None
        self.last_read_wall: float | None = None
        self.health = _health.Health(name, clock, expected=expected, max_s=retry_max_s)

    @property
    def present(self) -> bool:
        return self.reader is not None

    @property
    def reason(self) -> str | None:
        return self.health.reason

    def open(self) -> bool:
        """One attempt to open; False (absent, retry planned) when it fails."""
        try:
            self.reader = self.factory()
        except SourceError as exc:
            self.errors += 1
            self.health.down(str(exc))
            return False
        self.health.starting()
        return True

    def close(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.close()

    def read(self):
        if self.reader is None:
            if not self.health.retry_due() or not self.open():
                return None
        try:
            v = self.reader.read()
        except SourceError as exc:
            self.errors += 1
            self.close()
            self.health.down(str(exc))
            return None
        self.reads += 1
        self.last_read = self.clock.monotonic()
        self.last_read_wall = self.clock.wall()
        self.health.up()
        return v

    def state(self) -> dict:
        d = {"name": self.name, "present": self.present, "mode": "live", "path": self.path,
             "reads": self.reads, "errors": self.errors}
        d.update(self.health.to_dict())
        if self.reason:
            d["reason"] = self.reason
        if self.last_read is not None:
            d["last_read"] = round(self.last_read_wall, 3)
            d["age_s"] = round(self.clock.monotonic() - self.last_read, 3)
        return d


def _open(name: str, path: str, factory, clock, expected: bool = True,
          retry_max_s: float = _health.MAX_S) -> _Source:
    s = _Source(name, path, factory, clock, expected=expected, retry_max_s=retry_max_s)
    s.open()
    return s


class SensingUnit(Unit):
    name = "sensing"

    def __init__(self, ctx):
        super().__init__(ctx)
        cfg = ctx.config
        self.clock = ctx.clock
        self.model = MODELS[cfg.signal.model](cfg)
        self.history: collections.deque = collections.deque(maxlen=cfg.sense.history_size)
        self._latest: StressSample | None = None
        self._latest_bytes: bytes | None = None
        self._listeners: list[Callable[[StressSample], None]] = []
        self._fast_hints: list[Callable[[], bool]] = []
        self._seq = 0
        self._counters = {"critical_samples": 0, "oom_kills": 0, "thermal_breaches": 0,
                          "throttle_events": 0, "source_failures": 0}
        self._oom_base: dict[str, int] = {}
        self._oom_carry: dict[str, int] = {}
        self._oom_last: dict[str, int] = {}
        self._last_margin: float | None = None
        self._thermal: dict = {}
        self._interval = 1.0 / cfg.sense.sample_hz
        self._fast = False                  # sampling at sample_hz_max
        self._calm = False                  # the latest sample's band is LOW
        self._idle_check: Callable[[], bool] | None = None
        self._vm_next: float | None = None  # when vmstat is read next
        self._ticker: Ticker | None = None
        # The latest complete reading and vmstat figures: the governor runs
        # the same model on the reading with each job cgroup in place of the
        # watched one, and metrics() reports them (stores, nothing computed).
        self.last_reading: Reading | None = None
        self._last_vmstat = None
        self.meminfo = self.psi = self.vmstat = self.cgroup = self.nvml = None
        # Failure episodes of sources replaced by a reload: source_failures
        # is monotonic, so they stay counted.
        self._retired_episodes = 0
        self.tegra = TegrastatsSource(cfg.sense.tegrastats_command, cfg.sense.tegrastats_interval_ms,
                                      self.clock, on_sample=self._on_tegra, backoff_max_s=cfg.sense.retry_max_s)

    # ------------------------------------------------------------ public API
    def latest(self) -> StressSample | None:
        return self._latest

    def add_listener(self, fn: Callable[[StressSample], None]) -> None:
        """fn(sample) is called in the event loop on every new sample."""
        self._listeners.append(fn)

    def add_fast_hint(self, fn: Callable[[], bool]) -> None:
        """fn() -> True asks for sample_hz_max after this sample, as HIGH
        stress does (the governor: a job cgroup near its own cap)."""
        self._fast_hints.append(fn)

    def set_idle_check(self, fn: Callable[[], bool]) -> None:
        """fn() -> True: nobody to act for or watch; with a LOW band, sample
        at sense.sample_hz_idle (app.py: no connection, job or run)."""
        self._idle_check = fn

    def busy(self) -> None:
        """Someone arrived (a client connected): back to the base rate now,
        with a sample at once if the idle rate had the next one far away."""
        base = 1.0 / self.ctx.config.sense.sample_hz
        if self._interval > base:
            self._interval = base
            if self._ticker is not None:
                self._ticker.reschedule(0.0)

    def _rate_interval(self, sense) -> float:
        """Seconds to the next sample: fast, idle or base (module docstring)."""
        if self._fast:
            return 1.0 / max(sense.sample_hz_max, sense.sample_hz)
        if self._calm and self._idle_check is not None:
            try:
                idle = bool(self._idle_check())
            except Exception as exc:  # noqa: BLE001 - a bad check must not stop sensing
                log.error("idle_check_failed", error=repr(exc))
                idle = False
            if idle:
                return 1.0 / min(sense.sample_hz_idle, sense.sample_hz)
        return 1.0 / sense.sample_hz

    @property
    def sources(self) -> list[_Source]:
        return [s for s in (self.meminfo, self.psi, self.vmstat, self.nvml, self.cgroup) if s is not None]

    def anomaly_counters(self) -> dict:
        """source_failures counts failure episodes (a source going absent), not
        failed reads: a cgroup gone for a minute is one anomaly, not 600."""
        c = dict(self._counters)
        c["source_failures"] += sum(s.health.episodes for s in self.sources) + self.tegra.health.episodes \
            + self._retired_episodes
        return c

    def view(self) -> str:
        """Which memory budget the stress is computed from now: "cgroup" while
        the watched cgroup is read, else "host"."""
        s = self._latest
        return s.view if s is not None else "host"

    # ------------------------------------------------------------ lifecycle
    def _retire(self, src: _Source | None) -> None:
        if src is not None:
            self._retired_episodes += src.health.episodes
            src.close()

    def _open_proc(self, root: str) -> None:
        """meminfo, PSI and vmstat under proc_root (start, or a reload that changed it)."""
        clock, cap = self.clock, self.ctx.config.sense.retry_max_s
        for src in (self.meminfo, self.psi, self.vmstat):
            self._retire(src)
        self._oom_reset("vmstat")
        self._vm_next = None
        self.meminfo = _open("meminfo", os.path.join(root, "meminfo"), lambda: MeminfoReader(root), clock,
                             retry_max_s=cap)
        psi_path = os.path.join(root, "pressure", "memory")
        self.psi = _open("psi", psi_path, lambda: PsiReader(psi_path), clock, expected=False, retry_max_s=cap)
        self.vmstat = _open("vmstat", os.path.join(root, "vmstat"), lambda: VmstatReader(root), clock,
                            expected=False, retry_max_s=cap)

    def _open_cgroup(self, path: str) -> None:
        """The watched cgroup (start, or a reload that changed sense.cgroup); "" = none."""
        self._retire(self.cgroup)
        self.cgroup = None
        self._oom_reset("cgroup")
        if path:
            self.cgroup = _open("cgroup", path, lambda: CgroupReader(path), self.clock,
                                retry_max_s=self.ctx.config.sense.retry_max_s)

    def open_sources(self) -> None:
        sense = self.ctx.config.sense
        self._open_proc(sense.proc_root)
        if not self.meminfo.present:
            raise SourceError(f"cannot sense memory: {self.meminfo.reason}")
        # NVML is optional (no discrete GPU is the normal case on a Jetson),
        # but retried: a driver may load after the daemon.
        self.nvml = _open("nvml", "nvml", NvmlReader, self.clock, expected=False, retry_max_s=sense.retry_max_s)
        self._open_cgroup(sense.cgroup)

    async def start(self) -> None:
        self.open_sources()
        self.sample_once(force=True)
        await self.tegra.start()
        self._ticker = Ticker(self._round, lambda: self._interval, self.clock, self._round_failed)
        self._ticker.start()

    async def stop(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.stop()
        await self.tegra.stop()
        for s in self.sources:
            s.close()

    def ready(self) -> bool:
        return self._latest is not None

    async def reload(self, config) -> None:
        """Every sense.* key is applied here: sources whose setting changed are
        reopened (proc_root, cgroup) or restarted (tegrastats), so what
        system.reload reports as changed is what runs."""
        old = self.ctx.config
        super().reload(config)
        if config.signal.model != old.signal.model:
            self.model = MODELS[config.signal.model](config)
        elif hasattr(self.model, "configure"):
            self.model.configure(config)
        if config.sense.history_size != self.history.maxlen:
            self.history = collections.deque(self.history, maxlen=config.sense.history_size)
        new, was = config.sense, old.sense
        if (new.sample_hz, new.sample_hz_max, new.sample_hz_idle) != \
                (was.sample_hz, was.sample_hz_max, was.sample_hz_idle):
            self._interval = self._rate_interval(new)
        if new.retry_max_s != was.retry_max_s:
            for src in self.sources:
                src.health.set_max(new.retry_max_s)
        if new.proc_root != was.proc_root:
            log.info("source_reopen", source="proc", proc_root=new.proc_root)
            self._open_proc(new.proc_root)
            if not self.meminfo.present:
                log.error("source_absent", source="meminfo", reason=self.meminfo.reason, key="sense.proc_root")
        if new.cgroup != was.cgroup:
            log.info("source_reopen", source="cgroup", cgroup=new.cgroup or "-")
            self._open_cgroup(new.cgroup)
        if (new.tegrastats_command, new.tegrastats_interval_ms, new.retry_max_s) != \
                (was.tegrastats_command, was.tegrastats_interval_ms, was.retry_max_s):
            await self.tegra.reconfigure(new.tegrastats_command, new.tegrastats_interval_ms,
                                         backoff_max_s=new.retry_max_s)

    def status(self) -> dict:
        out = []
        for s in self.sources + [self.tegra]:
            st = s.state()
            d = {k: st[k] for k in ("name", "present", "mode", "state", "since", "attempts") if k in st}
            for k in ("reason", "last_error"):
                if st.get(k):
                    d[k] = st[k]
            out.append(d)
        return {"sources": out, "stress_view": self.view()}

    def metrics(self) -> list[dict]:
        """Stress, band, components, time to exhaustion, the figures the
        signal uses (meminfo, PSI, cgroup, vmstat), sources and tegrastats."""
        r = self.last_reading
        out = _metrics.stress_families(self._latest)
        out.append(_metrics.family("aal_core_sample_rate_hertz", "gauge",
                                   "Memory sampling rate now (faster under pressure).", 1.0 / self._interval))
        if r is not None:
            out += _metrics.meminfo_families(r.meminfo)
            out += _metrics.psi_families(r.psi)
            out += _metrics.cgroup_families(r.cgroup)
        out += _metrics.vmstat_families(self._last_vmstat)
        out += _metrics.anomaly_families(self.anomaly_counters())
        out += _metrics.source_families([s.state() for s in self.sources] + [self.tegra.state()])
        out += _metrics.tegrastats_families(self.tegra.latest, self.tegra.mode)
        return out

    def summary(self) -> str:
        s = self._latest
        if s is None:
            return "no stress sample yet"
        return f"stress {s.stress:.2f} {s.band} ({s.model})"

    # ------------------------------------------------------------ sampling
    def _round(self) -> None:
        """One sampling round, run by the Ticker every self._interval seconds
        (a loop timer callback: one wake-up per sample, nothing else)."""
        try:
            self.sample_once()
        except SourceError as exc:
            self._counters["source_failures"] += 1
            log.error("sample_failed", error=str(exc))

    def _round_failed(self, exc: Exception) -> None:
        # the ticks go on: the loop must survive a bug in one round
        self._counters["source_failures"] += 1
        log.error("sample_failed", error=repr(exc), exc_info=exc)

    def _oom(self, key: str, value: int | None) -> int:
        """OOM kills seen by `key` since start: the counter's rise since it was
        opened, plus what earlier openings of it had counted."""
        carry = self._oom_carry.get(key, 0)
        if value is None:
            return carry
        base = self._oom_base.setdefault(key, value)
        self._oom_last[key] = max(0, value - base)
        return carry + self._oom_last[key]

    def _oom_reset(self, key: str) -> None:
        """The counter is read from a new file (a recreated cgroup starts at 0):
        keep what was counted, take a new base."""
        self._oom_carry[key] = self._oom_carry.get(key, 0) + self._oom_last.pop(key, 0)
        self._oom_base.pop(key, None)

    def read(self) -> Reading | None:
        m = self.meminfo.read()
        if m is None:
            return None
        psi = self.psi.read()
        vm = None
        now = self.clock.monotonic()
        if self._fast or self._vm_next is None or now >= self._vm_next:
            vm = self.vmstat.read()
            self._vm_next = now + VMSTAT_INTERVAL_S
        cg = None
        if self.cgroup is not None:
            was_open = self.cgroup.present
            cg = self.cgroup.read()
            if not was_open and cg is not None:     # reopened: a new cgroup's counters
                self._oom_reset("cgroup")
        kills = max(self._oom("vmstat", vm.oom_kill if vm else None),
                    self._oom("cgroup", cg.oom_kill if cg else None))
        self._counters["oom_kills"] = max(self._counters["oom_kills"], kills)
        # A replay's RAM/lfb describe the recorded Jetson, not this machine:
        # they must not push this host's stress (tegrastats.latest shows them).
        tegra = self._fresh_tegra() if self.tegra.mode == "live" else None
        gpu = self.nvml.read() if self.nvml is not None else None
        r = Reading(t=self.clock.monotonic(), wall=self.clock.wall(), meminfo=m, cgroup=cg, psi=psi,
                    tegra=tegra, gpu_mem=gpu)
        self.last_reading = r
        if vm is not None:      # read once a second at the base rate: metrics() keeps the last
            self._last_vmstat = vm
        return r

    def _fresh_tegra(self) -> dict | None:
        """The latest tegrastats line, if read within the last three intervals."""
        t = self.tegra
        if t.last_read is None or \
                self.clock.monotonic() - t.last_read > 3 * self.ctx.config.sense.tegrastats_interval_ms / 1000:
            return None
        return t.latest

    def sample_once(self, force: bool = False) -> StressSample | None:
        r = self.read()
        if r is None:
            return None
        sample = self.model.update(r, force=force)
        if sample is None:              # classic: at most one per 0.5 s
            return None
        self._seq += 1
        extra = {"seq": self._seq}
        if self._fresh_tegra() is not None:     # thermal/power: shown, never folded in
            extra.update(self._thermal)
        sample = dataclasses.replace(sample, **extra)
        self.publish(sample)
        return sample

    def publish(self, sample: StressSample) -> None:
        prev = self._latest
        if prev is not None and prev.view != sample.view:
            # Said once per change, never silently: the budget the guard watches moved.
            why = self.cgroup.reason if self.cgroup is not None else None
            log.warning("stress_view", view=sample.view, was=prev.view, reason=why or "-")
        if sample.band == "CRITICAL":
            self._counters["critical_samples"] += 1
        d = sample.to_dict()
        raw = codec.dumps_value(d)
        self._latest = sample
        self._latest_bytes = raw
        self.history.append(raw)
        self.ctx.hub.publish("stress", d, encoded=raw)
        for fn in list(self._listeners):
            try:
                fn(sample)
            except Exception as exc:  # noqa: BLE001 - one bad listener must not stop sensing
                log.error("listener_failed", listener=getattr(fn, "__qualname__", repr(fn)), error=repr(exc))
        sense = self.ctx.config.sense
        fast = BAND_ORDER[sample.band] >= BAND_ORDER["HIGH"] or (
            sample.seconds_to_exhaustion is not None and sample.seconds_to_exhaustion < FAST_TTE_S)
        if not fast:
            for hint in self._fast_hints:
                try:
                    fast = bool(hint())
                except Exception as exc:  # noqa: BLE001 - a bad hint must not stop sensing
                    log.error("fast_hint_failed", hint=getattr(hint, "__qualname__", repr(hint)), error=repr(exc))
                if fast:
                    break
        self._fast = fast
        self._calm = sample.band == "LOW"
        self._interval = self._rate_interval(sense)

    def _on_tegra(self, parsed: dict) -> None:
        self._thermal = thermal.scalars(parsed, self.ctx.config.signal.throttle_c)
        margin = self._thermal.get("thermal_margin_c")
        # A replay's temperatures are a recorded board's: shown, never anomalies here.
        if margin is not None and self.tegra.mode == "live":
            last = self._last_margin
            if margin < THERMAL_WARN_MARGIN_C and (last is None or last >= THERMAL_WARN_MARGIN_C):
                self._counters["thermal_breaches"] += 1
            if margin <= 0 and (last is None or last > 0):
                self._counters["throttle_events"] += 1
            self._last_margin = margin

    # ------------------------------------------------------------ RPC
    def register(self, registry) -> None:
        def stress_get(p, call):
            """The current stress sample (stress, band, model, components, trend, time to exhaustion)."""
            if self._latest_bytes is None:
                self.sample_once(force=True)
            if self._latest_bytes is None:
                raise RpcError(E.SOURCE_ABSENT, "no stress sample: meminfo cannot be read",
                               {"reason": self.meminfo.reason if self.meminfo else "not started"})
            return codec.Fragment(self._latest_bytes)

        def stress_history(p, call):
            """The last N samples, oldest first."""
            n = p.get("count", 100)
            if n < 1:
                raise invalid_params("count must be >= 1", param="count", got=n)
            items = list(self.history)[-n:]
            return {"samples": [codec.Fragment(b) for b in items]}

        def stress_subscribe(p, call):
            mode = p.get("mode", "every")
            if mode == "every":
                return None
            if mode != "band":
                raise invalid_params("mode must be 'every' or 'band'", param="mode", got=mode,
                                     expected=["every", "band"])
            last = [None]

            def band_changed(data: dict) -> bool:
                if data["band"] == last[0]:
                    return False
                last[0] = data["band"]
                return True
            if self._latest is not None:
                last[0] = self._latest.band
            return band_changed

        def tegrastats_latest(p, call):
            """The last parsed tegrastats line; SOURCE_ABSENT when there is none."""
            t = self.tegra
            if t.latest_encoded is None:
                reason = t.reason or ("no line parsed yet" if t.present else "absent")
                raise RpcError(E.SOURCE_ABSENT, f"tegrastats: {reason}",
                               {"source": "tegrastats", "mode": t.mode, "reason": reason})
            return codec.Fragment(t.latest_encoded)

        def sense_sources(p, call):
            """Each source: present, mode, last read, error counts; the sampling rate; anomaly counters."""
            return {"sources": [s.state() for s in self.sources] + [self.tegra.state()],
                    "sample_hz": round(1.0 / self._interval, 3), "anomalies": self.anomaly_counters(),
                    "view": self.view()}

        registry.add("stress.get", stress_get, result="StressSample")
        registry.add("stress.history", stress_history, params="StressHistoryParams", result="StressHistoryResult")
        registry.add_topic("stress", data="StressSample", subscribe=stress_subscribe,
                           params="StressSubscribeParams",
                           summary="Push stress.update on every sample (mode 'every') or on band changes ('band').")
        registry.add("tegrastats.latest", tegrastats_latest, result="TegrastatsLatest")
        registry.add("sense.sources", sense_sources, result="SenseSourcesResult")
