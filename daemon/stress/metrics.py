"""Sensing's metric families, built from the latest sample and reading.

Pure: everything comes in as arguments (the unit passes its state at
scrape time).  Names follow node_exporter's habits: base units in the name,
PSI averages as ratios 0-1, stall totals as seconds counters.  tegrastats
labels are bounded: at most MAX_LABELS sensors and rails, names checked.
"""
from __future__ import annotations

import re

from ..metrics import family, sample
from .sample import BAND_ORDER, BANDS

MB = 1 << 20
KB = 1 << 10
MAX_LABELS = 16
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}\Z")


def stress_families(s) -> list[dict]:
    """From a StressSample (None before the first one)."""
    if s is None:
        return []
    out = [
        family("aal_core_ram_stress", "gauge", "RAM stress 0-1, as stress.get reports it.", float(s.stress)),
        family("aal_core_stress_band", "gauge", "The stress band as a state set: 1 for the band in force.",
               [sample(1.0 if name == s.band else 0.0, {"band": name}) for name, _ in BANDS]),
        family("aal_core_stress_band_index", "gauge", "The band as a number: 0 LOW, 1 MODERATE, 2 HIGH, 3 CRITICAL.",
               float(BAND_ORDER[s.band])),
        family("aal_core_stress_component", "gauge", "Each component of the stress model (0-1).",
               [sample(float(v), {"component": k}) for k, v in sorted(s.components.items())
                if type(v) in (int, float)][:MAX_LABELS]),
        family("aal_core_stress_trend_per_second", "gauge",
               "Change of the used fraction of the tighter memory budget per second.", float(s.trend_per_s)),
        family("aal_core_stress_samples_total", "counter", "Stress samples published since start.", float(s.seq)),
        family("aal_core_stress_last_sample_timestamp_seconds", "gauge", "Wall-clock time of the latest sample.",
               float(s.timestamp)),
        family("aal_core_stress_view_cgroup", "gauge",
               "1 while the stress is computed from the watched cgroup, 0 for the host view.",
               1.0 if s.view == "cgroup" else 0.0),
    ]
    tte = s.seconds_to_exhaustion
    # Declared with no sample while memory is not growing (no number is better than a made-up one).
    out.append(family("aal_core_time_to_exhaustion_seconds", "gauge",
                      "Seconds until the tighter memory budget runs out at the current slope "
                      "(no sample while memory is not growing).", [] if tte is None else [sample(float(tte))]))
    if s.thermal_margin_c is not None:
        out.append(family("aal_core_thermal_margin_celsius", "gauge",
                          "Degrees below the throttle temperature (signal.throttle_c).", float(s.thermal_margin_c)))
    if s.power_mw is not None:
        out.append(family("aal_core_board_power_watts", "gauge", "Board input power (tegrastats).",
                          float(s.power_mw) / 1000.0))
    return out


def meminfo_families(m) -> list[dict]:
    if m is None:
        return []
    fields = (("total", "MemTotal"), ("available", "MemAvailable"), ("free", "MemFree"),
              ("buffers", "Buffers"), ("cached", "Cached"), ("shmem", "Shmem"),
              ("swap_total", "SwapTotal"), ("swap_free", "SwapFree"), ("nvmap_used", "NvMapMemUsed"),
              ("cma_total", "CmaTotal"), ("cma_free", "CmaFree"))
    out = []
    for attr, kernel in fields:
        v = getattr(m, attr, None)
        if v is not None:
            out.append(family(f"aal_core_memory_{attr}_bytes", "gauge", f"/proc/meminfo {kernel}.", float(v)))
    out.append(family("aal_core_memory_available_estimated", "gauge",
                      "1 when MemAvailable was estimated (kernel without it).",
                      1.0 if getattr(m, "available_estimated", False) else 0.0))
    return out


def _psi(prefix: str, where: str, p) -> list[dict]:
    out = []
    for kind in ("some", "full"):
        avgs = [(w, getattr(p, f"{kind}_{w}", None)) for w in ("avg10", "avg60", "avg300")]
        avgs = [(w, v) for w, v in avgs if v is not None]
        if avgs:
            out.append(family(f"{prefix}_{kind}_ratio", "gauge",
                              f"{where} memory pressure ({kind}): share of time stalled, by averaging window.",
                              [sample(v / 100.0, {"window": w}) for w, v in avgs]))
        total = getattr(p, f"{kind}_total", None)
        if total is not None:
            out.append(family(f"{prefix}_{kind}_stall_seconds_total", "counter",
                              f"{where} memory pressure ({kind}): total stall time.", total / 1e6))
    return out


def psi_families(p) -> list[dict]:
    return [] if p is None else _psi("aal_core_pressure_memory", "Host", p)


def cgroup_families(cg) -> list[dict]:
    if cg is None:      # declared, no samples: no cgroup is watched
        return [family(n, "gauge", h, []) for n, h in (
            ("aal_core_cgroup_memory_usage_bytes", "The watched cgroup's memory usage (sense.cgroup)."),
            ("aal_core_cgroup_memory_working_set_bytes", "The watched cgroup's usage less its inactive file pages."),
            ("aal_core_cgroup_memory_limit_bytes", "The watched cgroup's memory limit."))]
    out = [family("aal_core_cgroup_memory_usage_bytes", "gauge", "The watched cgroup's memory usage.",
                  float(cg.usage)),
           family("aal_core_cgroup_memory_working_set_bytes", "gauge",
                  "The watched cgroup's usage less its inactive file pages.", float(cg.working_set))]
    if cg.limit is not None:
        out.append(family("aal_core_cgroup_memory_limit_bytes", "gauge", "The watched cgroup's memory limit.",
                          float(cg.limit)))
    if cg.psi is not None:
        out.extend(_psi("aal_core_cgroup_pressure_memory", "Watched cgroup", cg.psi))
    return out


def vmstat_families(vm) -> list[dict]:
    if vm is None:
        return []
    return [family(f"aal_core_vmstat_{k}_total", "counter", f"/proc/vmstat {k} (since boot).",
                   float(getattr(vm, k))) for k in ("pgmajfault", "pswpin", "pswpout", "allocstall")]


def anomaly_families(c: dict) -> list[dict]:
    helps = {"oom_kills": "OOM kills seen (host vmstat or the watched cgroup) since the daemon started.",
             "critical_samples": "Stress samples in the CRITICAL band since start.",
             "thermal_breaches": "Times the thermal margin fell below 10 degrees C.",
             "throttle_events": "Times the thermal margin reached 0 (throttling).",
             "source_failures": "Failure episodes of the sources (a source going absent)."}
    return [family(f"aal_core_{k}_total", "counter", h, float(c.get(k, 0))) for k, h in helps.items()]


def source_families(states: list[dict]) -> list[dict]:
    """From each source's state() dict; sources switched off are left out."""
    up, reads, errors = [], [], []
    for st in states:
        if st.get("state") == "off" or st.get("mode") == "off":
            continue
        lab = {"source": st["name"]}
        up.append(sample(1.0 if st.get("present") and st.get("state") != "absent" else 0.0, lab))
        if "reads" in st:
            reads.append(sample(float(st["reads"]), lab))
        if "errors" in st:
            errors.append(sample(float(st["errors"]), lab))
    return [family("aal_core_source_up", "gauge", "1 while a source is read, 0 while it is absent.", up),
            family("aal_core_source_reads_total", "counter", "Successful reads of each source.", reads),
            family("aal_core_source_errors_total", "counter", "Failed reads or opens of each source.", errors)]


# Every tegrastats family, declared even when the line lacks the field (no sample then).
TEGRA = {
    "aal_core_tegrastats_ram_used_bytes": "tegrastats RAM used.",
    "aal_core_tegrastats_ram_total_bytes": "tegrastats RAM total.",
    "aal_core_tegrastats_lfb_bytes": "Largest free block run (lfb blocks x block size).",
    "aal_core_tegrastats_swap_used_bytes": "tegrastats swap used.",
    "aal_core_tegrastats_swap_total_bytes": "tegrastats swap total.",
    "aal_core_tegrastats_emc_utilization_ratio": "External memory controller load (EMC_FREQ), 0-1.",
    "aal_core_tegrastats_emc_frequency_hertz": "EMC clock.",
    "aal_core_tegrastats_gpu_utilization_ratio": "GPU load (GR3D_FREQ), 0-1.",
    "aal_core_tegrastats_cpu_utilization_ratio": "Mean load of the online CPUs, 0-1.",
    "aal_core_tegrastats_temperature_celsius": "Each thermal zone tegrastats prints.",
    "aal_core_tegrastats_power_watts": "Each power rail's current draw.",
}


def tegrastats_families(t: dict | None, mode: str) -> list[dict]:
    """From the latest parsed tegrastats line (tegrastats.latest).  In replay
    mode the figures describe the recorded board: aal_core_tegrastats_replay
    says so."""
    v: dict[str, list] = {k: [] for k in TEGRA}
    t = t or {}

    def one(name, x):
        v[name].append(sample(float(x)))
    ram, swap = t.get("ram"), t.get("swap")
    if ram:
        one("aal_core_tegrastats_ram_used_bytes", ram["used_mb"] * MB)
        one("aal_core_tegrastats_ram_total_bytes", ram["total_mb"] * MB)
        if "lfb_blocks" in ram:
            one("aal_core_tegrastats_lfb_bytes", ram["lfb_blocks"] * ram["lfb_block_kb"] * KB)
    if swap:
        one("aal_core_tegrastats_swap_used_bytes", swap["used_mb"] * MB)
        one("aal_core_tegrastats_swap_total_bytes", swap["total_mb"] * MB)
    emc = t.get("emc") or {}
    if "util_pct" in emc:
        one("aal_core_tegrastats_emc_utilization_ratio", emc["util_pct"] / 100.0)
    if "freq_mhz" in emc:
        one("aal_core_tegrastats_emc_frequency_hertz", emc["freq_mhz"] * 1e6)
    gpu = t.get("gpu") or {}
    if "util_pct" in gpu:
        one("aal_core_tegrastats_gpu_utilization_ratio", gpu["util_pct"] / 100.0)
    cpus = [c for c in t.get("cpus") or [] if c.get("online") and "util_pct" in c]
    if cpus:
        one("aal_core_tegrastats_cpu_utilization_ratio", sum(c["util_pct"] for c in cpus) / len(cpus) / 100.0)
    temps = [(k, x) for k, x in sorted((t.get("temps_c") or {}).items()) if _NAME.match(k)][:MAX_LABELS]
    v["aal_core_tegrastats_temperature_celsius"] = [sample(float(x), {"sensor": k}) for k, x in temps]
    rails = [(k, x) for k, x in sorted((t.get("power_mw") or {}).items()) if _NAME.match(k)][:MAX_LABELS]
    v["aal_core_tegrastats_power_watts"] = [sample(x["current"] / 1000.0, {"rail": k}) for k, x in rails]
    out = [family("aal_core_tegrastats_replay", "gauge",
                  "1 when the tegrastats figures come from the bundled recording, not this board.",
                  1.0 if mode == "replay" else 0.0)]
    return out + [family(k, "gauge", TEGRA[k], v[k]) for k in TEGRA]
