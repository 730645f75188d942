"""Configuration: a TOML file of sections, each a frozen dataclass here.

Every key is documented in README ("Configuration").  An unknown section or
key, or a value of the wrong type, is a ConfigError naming the key and the
file.  Command-line options override the file.  Defaults are the ones for a
root install; `local_defaults()` gives the no-root, no-service ones used by
`aal-core run --local`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
import typing
from dataclasses import dataclass, field, fields, replace

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Jetson JetPack 6 ships Python 3.10
    import tomli as tomllib

from .errors import ConfigError

DEFAULT_CONFIG_FILE = "/etc/aal-core/aal-core.toml"


@dataclass(frozen=True)
class DaemonConfig:
    socket: str = "/run/aal-core/aal-core.sock"
    state_dir: str = "/var/lib/aal-core"
    log_level: str = "info"
    # Seconds to let in-flight requests finish on SIGTERM before closing.
    stop_grace_s: float = 5.0
    # Seconds to wait for the first readings before READY=1 anyway.
    ready_timeout_s: float = 10.0


@dataclass(frozen=True)
class RpcConfig:
    max_frame_bytes: int = 1 << 20
    max_depth: int = 64
    max_batch: int = 100
    max_connections: int = 1000
    # Seconds without a complete frame or a subscription before a connection is closed.
    idle_timeout_s: float = 300.0
    # Notifications queued per connection while the client does not read;
    # beyond it the oldest are dropped and counted.
    outbox_max_frames: int = 256
    # Group that owns the socket (mode 0660) and whose members get write access.
    group: str = "aal"
    # Seconds between system.heartbeat pushes (only while someone subscribes).
    heartbeat_interval_s: float = 1.0
    # Largest reply sent (a batch's whole reply counts as one); a bigger
    # result is error -32012 for its id.
    max_reply_bytes: int = 1 << 20
    # Bytes of replies and pushes a client has not taken yet ("unsent"):
    # reading from it pauses at soft; a write past hard closes it (hard >=
    # soft + max_reply_bytes); past total, summed over all connections, the
    # stalled ones holding the most are closed (total >= hard).
    unsent_soft_bytes: int = 256 * 1024
    unsent_hard_bytes: int = 2 << 20
    unsent_total_bytes: int = 8 << 20


@dataclass(frozen=True)
class SenseConfig:
    proc_root: str = "/proc"
    # Command to run tegrastats; "off" disables the source; "replay" uses the
    # bundled recording; "auto" the real one if on PATH, else the replay.
    tegrastats_command: str = "tegrastats"
    tegrastats_interval_ms: int = 1000
    # cgroup to watch (a directory under /sys/fs/cgroup...), "" for none.
    cgroup: str = ""
    # Memory sampling rate in Hz ...
    sample_hz: float = 10.0
    # ... and the rate it speeds up to when headroom shrinks (HIGH or worse,
    # or under a minute to exhaustion), earlyoom-style.
    sample_hz_max: float = 50.0
    # ... and the rate it slows to while the band is LOW and no client, job
    # or training run is there (an idle board: 2 wake-ups a second, not 10).
    sample_hz_idle: float = 2.0
    # Samples kept for stress.history.
    history_size: int = 600
    # Cap of the backoff (0.5 s doubling) at which a source that went away
    # (a removed cgroup, a dead tegrastats, NVML, a /proc file) is reopened.
    retry_max_s: float = 30.0


@dataclass(frozen=True)
class SignalConfig:
    model: str = "fused"
    # fused: seconds of samples the least-squares trend is fitted over.
    trend_window_s: float = 2.0
    # fused: the trend counts only once this fraction of the budget is used.
    trend_min_used: float = 0.3
    # Temperature (°C) at which the SoC throttles; thermal_margin_c = this - temperature.
    throttle_c: float = 95.0


@dataclass(frozen=True)
class GovernConfig:
    """Memory governance (README, "governance")."""
    # "progressive": steps one by one, hysteresis and hold; "seed": the seed's
    # all-at-once semantics (stress > 0.3 + 0.05 x priority).
    mode: str = "progressive"
    # Stress the PID regulates the machine-wide degradation level towards.
    setpoint: float = 0.6
    kp: float = 0.6
    ki: float = 0.1
    kd: float = 0.05
    # Degradation level (PID output, 0..1) per step beyond a job's first.
    level_per_step: float = 0.05
    # A step is lifted once stress stayed below threshold - hysteresis for hold_s.
    hysteresis: float = 0.05
    hold_s: float = 5.0
    # A job whose heartbeats stop for this long is released.
    heartbeat_timeout_s: float = 30.0
    # A directive unacknowledged for longer is reported overdue.
    ack_timeout_s: float = 2.0
    # Per-job cgroups: "auto" (v2 if the unified hierarchy has memory, else
    # v1 /sys/fs/cgroup/memory), "off", or a cgroup directory to create them under.
    cgroup_root: str = "auto"
    # The group job cgroups are made in under cgroup_root "auto"
    # (<hierarchy root>/<cgroup_group>/<job_id>); one path component.
    # `aal-core run --local DIR` defaults it to "aal-core-local-<8 hex of
    # sha256(DIR's absolute path)>", so a local run never uses the system's.
    cgroup_group: str = "aal-core"
    # Jobs of priority <= refuse_priority are refused at stress >= refuse_stress.
    refuse_stress: float = 0.98
    refuse_priority: int = 3


@dataclass(frozen=True)
class TrainConfig:
    """Training loops: the policy ladder and command freshness (README, "Training loops")."""
    # Halvings of the micro-batch (gradient accumulation doubled each time),
    # the first at stress >= halve_at, each next one halve_step higher.
    batch_halvings: int = 2
    min_micro_batch: int = 1
    halve_at: float = 0.6
    halve_step: float = 0.05
    # Activation checkpointing at stress >= checkpointing_at.
    checkpointing_at: float = 0.75
    # Checkpoint and pause at stress >= pause_at; resume once stress stayed
    # below resume_below for hold_s.
    pause_at: float = 0.85
    resume_below: float = 0.6
    # A rung is lifted once stress stayed below enter_at - hysteresis for hold_s.
    hysteresis: float = 0.1
    hold_s: float = 3.0
    # Clients refuse a command issued longer ago than freshness_s, or more
    # than future_skew_s ahead of their clock.
    freshness_s: float = 60.0
    future_skew_s: float = 5.0
    # A command not applied within deadline_ms of its issue is void.
    deadline_ms: int = 30000
    # A run whose reported knobs still differ from its rung's, with nothing
    # pending, is sent the commands again after reissue_s.
    reissue_s: float = 5.0
    # Answered commands kept per run for train.status.
    history: int = 32
    # Runs registered at once.
    max_runs: int = 32
    # A halving whose doubled accumulation would pass max_grad_accum cuts
    # the effective batch instead (micro-batch halved, accumulation kept) and
    # scales the learning rate with it by lr_rule: "sqrt" (x sqrt(1/2) per
    # cut), "linear" (x 1/2) or "off" (no cuts: such a halving is no rung).
    max_grad_accum: int = 16
    lr_rule: str = "sqrt"
    # The own-swing discount (README): a run's trend is left out while the
    # budget's use is within its last trough + own_swing_margin x its own
    # per-step swing and the trend has lasted less than own_trend_max_s; its
    # next peak (trough + swing) is judged by the level curve instead.
    own_swing_margin: float = 1.25
    own_trend_max_s: float = 1.0
    # Circuit breaker: opened when a paused run's stress stayed >= pause_at
    # for breaker_paused_s (0: never), or a report's loss is not finite
    # (breaker_nonfinite_loss); closed once stress fell below resume_below,
    # or a later report's loss is finite.
    breaker_paused_s: float = 120.0
    breaker_nonfinite_loss: bool = True
    # train.telemetry: metric series kept per run (latest value of each,
    # the least recently updated forgotten first), events kept per run, and
    # the most of each one packet may carry.
    telemetry_metrics: int = 128
    telemetry_events: int = 32
    telemetry_packet_max: int = 256


@dataclass(frozen=True)
class LedgerConfig:
    # File name inside the state directory.
    file: str = "ledger.aal"
    # Concurrent appends share one write and one fsync (group commit).
    group_commit: bool = True
    # Most entries written per fsync when group commit is on.
    max_batch: int = 1024
    # Largest canonical `data` accepted by ledger.append, in bytes.
    max_entry_bytes: int = 65536


@dataclass(frozen=True)
class VenomConfig:
    """The control loop (README, "venom").  The beat is
    T_Λ = T1·ln U / (1 − 1/(k·P)); the defaults give 1.0 s."""
    enabled: bool = True
    # Seconds; 0.2375 with k=4, P=5, U=e^4 gives a 1.0 s beat (the seed's 0.001 gives 4.2 ms).
    t1: float = 0.2375
    k_flows: int = 4
    p_nodes: int = 5
    # The U of T_Λ (ln U = 4 by default).
    u: float = 54.598150033144236
    # The PID's setpoint for T_Λ, seconds.
    t_threshold: float = 0.02
    # Genome weights (normalised to sum to 1 at start).
    weight_r: float = 0.25
    weight_b: float = 0.25
    weight_e: float = 0.15
    weight_o: float = 0.35
    # Entropy model σ(w·anomalies + b) until a model file is loaded.
    ml_weight: float = 0.12
    ml_bias: float = 0.0
    # Model file (aal-core.entropy.v1 JSON) to load at start; "" = the one last
    # set with venom.set_model (state_dir/venom-model.json) if any.
    model_file: str = ""
    # Seconds of NOOP beats summarised into one ledger entry.
    summary_interval_s: float = 60.0
    # A beat at least this fraction of T_Λ behind its deadline counts as an anomaly.
    late_fraction: float = 0.5
    # How the four cores run each beat: "inline" (fastest here) or "threads".
    runner: str = "inline"
    # Sustained evidence: anomaly units over the last evidence_window_s seconds
    # feed the model; one CRITICAL second weighs critical_weight units, every
    # other anomaly 1 (README, "venom").
    evidence_window_s: float = 10.0
    critical_weight: float = 2.0
    # A quarantine the loop imposed ends by itself once stress stayed below
    # govern.setpoint (and no beat wanted a QUARANTINE) for this many seconds.
    release_hold_s: float = 30.0


@dataclass(frozen=True)
class BudgetConfig:
    """Per-peer budgets (README, "Budgets"): past one, a call gets BUDGET_EXCEEDED."""
    # Uids never refused (still counted): integers, "root" (0) and "daemon"
    # (the daemon's own user), comma-separated; "" budgets everyone.
    exempt: str = "root,daemon"
    # Jobs held in the governor at once.
    jobs_per_uid: int = 256
    jobs_per_connection: int = 128
    # Push subscriptions held at once.
    subscriptions_per_uid: int = 1024
    subscriptions_per_connection: int = 256
    # Ledger-writing calls: a token bucket of this rate and size, per uid.
    ledger_calls_per_s: float = 10.0
    ledger_calls_burst: int = 100
    # Ledger record bytes appended for a uid's calls in a rolling 24 h.
    ledger_bytes_per_day: int = 128 << 20


@dataclass(frozen=True)
class OverlaysConfig:
    """Overlays (README, "Overlays").  The bus (registry, invoke, provenance)
    and the sandbox ("Confinement": user .. max_processes)."""
    # One directory per overlay, each with its manifest.json (--local DIR: DIR/overlays).
    dir: str = "/etc/aal-core/overlays"
    # Store each call's full payload in the provenance log (dev mode; also
    # AAL_DEV_LOG_PAYLOAD=1): needed by replay; off, only its hash is kept.
    log_payload: bool = False
    # http overlays: TCP to 127.0.0.1/::1/localhost (else Unix sockets only),
    # and any host (only where the daemon's unit gives it a network).
    allow_tcp_loopback: bool = False
    allow_remote_http: bool = False
    # Bounds on what an overlay sends back (bytes): its stdout / HTTP body
    # (past it the call fails), and the tail of its stderr kept for the error.
    max_output_bytes: int = 1 << 20
    max_stderr_bytes: int = 4096
    # http overlays: connection retries (connection errors only) and the first backoff.
    http_retries: int = 3
    http_backoff_s: float = 0.05
    # File name of the provenance log inside the state directory.
    provenance_file: str = "provenance.jsonl"
    # Rotation: past this many bytes the file becomes a segment <file>.<first
    # seq> (with its .idx of line offsets); at most provenance_keep segments
    # are kept (0: all), a deletion being recorded in the ledger.
    provenance_max_bytes: int = 64 << 20
    provenance_keep: int = 0
    # The unprivileged user a root daemon runs every overlay as (never root).
    user: str = "aal-overlay"
    # Run CLEAR calls even where no kernel mechanism can make them read-only.
    allow_unconfined: bool = False
    # Inet sockets (AF_INET/AF_INET6) for the phases other than CLEAR, which
    # never has any; Unix sockets are always allowed there.
    network: bool = False
    # Parent of the per-call scratch directories; "" = <tmp>/aal-core-overlays-<euid>.
    scratch_dir: str = ""
    # RLIMIT_NOFILE of an overlay process, and RLIMIT_NPROC of the overlay
    # user (only where the daemon changes to that user).
    max_open_files: int = 1024
    max_processes: int = 512
    # More paths a CLEAR overlay may read, ":"-separated, absolute (a directory
    # with what is under it), besides its own directory, its executable's
    # installation and the system's (README "What each phase may read").
    read_paths: str = ""


@dataclass(frozen=True)
class MetricsConfig:
    """`aal-core export`'s Prometheus side (README "Observability and the fleet");
    the daemon itself serves no network."""
    # host:port where /metrics is served ("[::1]:9469" for IPv6); "off" serves nothing.
    listen: str = "127.0.0.1:9469"
    # A .prom file for node_exporter's textfile collector, rewritten atomically; "" for none.
    textfile: str = ""
    textfile_interval_s: float = 15.0
    # Longest a scrape waits for the daemon's system.metrics; then it answers
    # with the exporter's own metrics and aal_core_daemon_up 0.
    scrape_timeout_s: float = 2.0


@dataclass(frozen=True)
class FleetConfig:
    """`aal-core export` publishing to Redis Streams; off while redis_url is empty."""
    # redis://[user:password@]host:port/db (or rediss://); "" = fleet publishing off.
    redis_url: str = ""
    # The board's name in the stream keys aal-core:<node_id>:...; "" = the hostname.
    node_id: str = ""
    # Stress samples published per second (downsampled from the daemon's rate).
    sample_hz: float = 1.0
    # A signed ledger head after this many new entries, or this many seconds.
    head_every_entries: int = 100
    head_every_s: float = 60.0
    # Approximate stream lengths kept (XADD MAXLEN ~): a day of 1 Hz samples.
    samples_maxlen: int = 86400
    events_maxlen: int = 100000
    heads_maxlen: int = 10000
    # Entries held while Redis is unreachable; beyond it the oldest are dropped and counted.
    buffer_max: int = 10000
    # Reconnect backoff doubles from 0.5 s up to this.
    reconnect_max_s: float = 30.0


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    rpc: RpcConfig = field(default_factory=RpcConfig)
    sense: SenseConfig = field(default_factory=SenseConfig)
    signal: SignalConfig = field(default_factory=SignalConfig)
    govern: GovernConfig = field(default_factory=GovernConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    venom: VenomConfig = field(default_factory=VenomConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    overlays: OverlaysConfig = field(default_factory=OverlaysConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: dict[str, dict]) -> "Config":
        """Apply {"section": {"key": value}} (already typed, e.g. from argv)."""
        out = self
        for section, kv in overrides.items():
            if kv:
                out = replace(out, **{section: replace(getattr(out, section), **kv)})
        return out


# Allowed choices for string keys, checked at load.
CHOICES = {
    ("daemon", "log_level"): ("debug", "info", "warning", "error"),
    ("signal", "model"): ("classic", "fused"),
    ("train", "lr_rule"): ("sqrt", "linear", "off"),
    ("govern", "mode"): ("seed", "progressive"),
    ("venom", "runner"): ("inline", "threads"),
}

# Inclusive (min, max) for numeric keys, checked at load; None = unbounded.
RANGES = {
    ("ledger", "max_batch"): (1, 1 << 20),
    ("ledger", "max_entry_bytes"): (64, 1 << 23),
    ("daemon", "stop_grace_s"): (0.0, 300.0),
    ("daemon", "ready_timeout_s"): (0.0, 25.0),  # below the unit's TimeoutStartSec=30s
    ("rpc", "max_frame_bytes"): (64, 1 << 30),
    # <= 512: a frame with a 19+ digit run is re-read by the stdlib parser,
    # which recurses once per level under the interpreter's limit of 1000.
    ("rpc", "max_depth"): (2, 512),
    ("rpc", "max_batch"): (1, None),
    ("rpc", "max_connections"): (1, 1 << 20),
    ("rpc", "idle_timeout_s"): (0.1, None),
    ("rpc", "outbox_max_frames"): (1, None),
    ("rpc", "heartbeat_interval_s"): (0.001, 3600.0),
    ("rpc", "max_reply_bytes"): (1024, 1 << 30),
    ("rpc", "unsent_soft_bytes"): (4096, 1 << 30),
    ("rpc", "unsent_hard_bytes"): (8192, 1 << 31),
    ("rpc", "unsent_total_bytes"): (8192, 1 << 40),
    ("govern", "setpoint"): (0.0, 1.0),
    ("govern", "kp"): (0.0, 100.0),
    ("govern", "ki"): (0.0, 100.0),
    ("govern", "kd"): (0.0, 100.0),
    ("govern", "level_per_step"): (0.001, 1.0),
    ("govern", "hysteresis"): (0.0, 1.0),
    ("govern", "hold_s"): (0.0, 3600.0),
    ("govern", "heartbeat_timeout_s"): (0.1, 86400.0),
    ("govern", "ack_timeout_s"): (0.01, 3600.0),
    ("govern", "refuse_stress"): (0.0, 1.0),
    ("govern", "refuse_priority"): (-1, 9),
    ("train", "batch_halvings"): (0, 16),
    ("train", "min_micro_batch"): (1, 1 << 20),
    ("train", "halve_at"): (0.0, 1.0),
    ("train", "halve_step"): (0.0, 1.0),
    ("train", "checkpointing_at"): (0.0, 1.0),
    ("train", "pause_at"): (0.0, 1.0),
    ("train", "resume_below"): (0.0, 1.0),
    ("train", "hysteresis"): (0.0, 1.0),
    ("train", "hold_s"): (0.0, 3600.0),
    ("train", "freshness_s"): (1.0, 86400.0),
    ("train", "future_skew_s"): (0.0, 3600.0),
    ("train", "deadline_ms"): (100, 86400000),
    ("train", "reissue_s"): (0.1, 3600.0),
    ("train", "history"): (1, 10000),
    ("train", "max_runs"): (1, 10000),
    ("train", "max_grad_accum"): (1, 1 << 20),
    ("train", "own_swing_margin"): (1.0, 10.0),
    ("train", "own_trend_max_s"): (0.0, 60.0),
    ("train", "breaker_paused_s"): (0.0, 86400.0),
    ("train", "telemetry_metrics"): (1, 100000),
    ("train", "telemetry_events"): (1, 100000),
    ("train", "telemetry_packet_max"): (1, 100000),
    ("sense", "tegrastats_interval_ms"): (10, 3600000),
    ("sense", "sample_hz"): (0.1, 1000.0),
    ("sense", "sample_hz_max"): (0.1, 1000.0),
    ("sense", "sample_hz_idle"): (0.1, 1000.0),
    ("sense", "history_size"): (1, 1000000),
    ("sense", "retry_max_s"): (0.5, 3600.0),
    ("signal", "trend_window_s"): (0.2, 600.0),
    ("signal", "trend_min_used"): (0.0, 1.0),
    ("signal", "throttle_c"): (-40.0, 200.0),
    ("venom", "t1"): (0.0, 3600.0),
    ("venom", "k_flows"): (1, 1 << 20),
    ("venom", "p_nodes"): (1, 1 << 20),
    ("venom", "u"): (1.0, None),
    ("venom", "t_threshold"): (0.0, 3600.0),
    ("venom", "weight_r"): (0.0, 1000.0),
    ("venom", "weight_b"): (0.0, 1000.0),
    ("venom", "weight_e"): (0.0, 1000.0),
    ("venom", "weight_o"): (0.0, 1000.0),
    ("venom", "summary_interval_s"): (1.0, 86400.0),
    ("venom", "late_fraction"): (0.01, 100.0),
    ("venom", "evidence_window_s"): (0.1, 3600.0),
    ("venom", "critical_weight"): (0.0, 1000.0),
    ("venom", "release_hold_s"): (0.0, 86400.0),
    ("budget", "jobs_per_uid"): (1, 1 << 20),
    ("budget", "jobs_per_connection"): (1, 1 << 20),
    ("budget", "subscriptions_per_uid"): (1, 1 << 20),
    ("budget", "subscriptions_per_connection"): (1, 1 << 20),
    ("budget", "ledger_calls_per_s"): (0.001, 1e6),
    ("budget", "ledger_calls_burst"): (1, 1 << 20),
    ("budget", "ledger_bytes_per_day"): (1, 1 << 40),
    ("overlays", "max_output_bytes"): (1024, 1 << 30),
    ("overlays", "max_stderr_bytes"): (256, 1 << 20),
    ("overlays", "http_retries"): (0, 20),
    ("overlays", "http_backoff_s"): (0.0, 60.0),
    ("overlays", "max_open_files"): (16, 1 << 20),
    ("overlays", "max_processes"): (1, 1 << 22),
    ("metrics", "textfile_interval_s"): (0.1, 86400.0),
    ("metrics", "scrape_timeout_s"): (0.05, 60.0),
    ("fleet", "sample_hz"): (0.001, 100.0),
    ("fleet", "head_every_entries"): (1, 1 << 30),
    ("fleet", "head_every_s"): (0.1, 86400.0),
    ("fleet", "samples_maxlen"): (1, 1 << 31),
    ("fleet", "events_maxlen"): (1, 1 << 31),
    ("fleet", "heads_maxlen"): (1, 1 << 31),
    ("fleet", "buffer_max"): (1, 1 << 24),
    ("fleet", "reconnect_max_s"): (0.5, 3600.0),
}

# Keys a SIGHUP reload cannot change in a running daemon.
RESTART_KEYS = {("daemon", "socket"), ("daemon", "state_dir"), ("rpc", "group"),
                ("ledger", "file"), ("overlays", "provenance_file")}


def local_defaults(base: str) -> Config:
    """Defaults for `--local`: socket and state under `base`, no root needed."""
    base = os.path.abspath(base)
    return Config(daemon=DaemonConfig(socket=os.path.join(base, "aal-core.sock"),
                                      state_dir=os.path.join(base, "state")),
                  overlays=OverlaysConfig(dir=os.path.join(base, "overlays")),
                  govern=GovernConfig(cgroup_group=local_cgroup_group(base)))


# The TOML value types each key type accepts (an integer is a valid number),
# and how an error names the key type.  Every key is one of these four.
_ACCEPTS = {bool: ((bool,), "a boolean"), int: ((int,), "an integer"),
            float: ((int, float), "a number"), str: ((str,), "a string")}


def _type_ok(expected, value) -> bool:
    return type(value) in _ACCEPTS[expected][0]


def _type_label(t) -> str:
    return _ACCEPTS[t][1]


def from_mapping(data: dict, source: str, base: Config | None = None) -> Config:
    """Build a Config from parsed TOML, validating every key against `base`."""
    base = base or Config()
    sections = {f.name: f for f in fields(Config)}
    overrides: dict[str, dict] = {}
    for sname, body in data.items():
        if sname not in sections:
            raise ConfigError(f"{source}: unknown section [{sname}] (known: {', '.join(sections)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{sname}] must be a table")
        section_cls = type(getattr(base, sname))
        hints = typing.get_type_hints(section_cls)
        for key, value in body.items():
            if key not in hints:
                raise ConfigError(f"{source}: unknown key {sname}.{key} (known: {', '.join(hints)})")
            if not _type_ok(hints[key], value):
                raise ConfigError(f"{source}: {sname}.{key} must be {_type_label(hints[key])}, "
                                  f"got {type(value).__name__} {value!r}")
            choices = CHOICES.get((sname, key))
            if choices and value not in choices:
                raise ConfigError(f"{source}: {sname}.{key} must be one of {', '.join(choices)}, got {value!r}")
            bounds = RANGES.get((sname, key))
            if bounds is not None:
                lo, hi = bounds
                if (lo is not None and value < lo) or (hi is not None and value > hi):
                    rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
                    raise ConfigError(f"{source}: {sname}.{key} must be {rng}, got {value!r}")
            if (sname, key) == ("budget", "exempt"):
                _check_exempt(value, source)
            if (sname, key) == ("govern", "cgroup_group"):
                _check_cgroup_group(value, source)
            if (sname, key) == ("metrics", "listen"):
                parse_listen(value, source)
            if (sname, key) == ("fleet", "redis_url") and value and \
                    not value.startswith(("redis://", "rediss://", "unix://")):
                raise ConfigError(f"{source}: fleet.redis_url must start with redis://, rediss:// or unix:// "
                                  f"(or be empty: fleet off), got {value!r}")
            if (sname, key) == ("fleet", "node_id") and value and not _NODE_ID.match(value):
                raise ConfigError(f"{source}: fleet.node_id must be 1-64 of A-Z a-z 0-9 . _ - "
                                  f"(it names Redis keys), got {value!r}")
            if hints[key] is float:
                value = float(value)
            overrides.setdefault(sname, {})[key] = value
    cfg = base.with_overrides(overrides)
    _check_rpc_unsent(cfg.rpc, source)
    _check_train_ladder(cfg.train, source)
    return cfg


def _check_rpc_unsent(rpc: RpcConfig, source: str) -> None:
    """The unsent-bytes limits only make sense in order: a reading client's
    reply (up to max_reply_bytes past the soft limit) must not hit the hard
    limit, and one connection must be able to reach its hard limit."""
    if rpc.unsent_hard_bytes < rpc.unsent_soft_bytes + rpc.max_reply_bytes:
        raise ConfigError(f"{source}: rpc.unsent_hard_bytes must be at least rpc.unsent_soft_bytes + "
                          f"rpc.max_reply_bytes = {rpc.unsent_soft_bytes + rpc.max_reply_bytes}, "
                          f"got {rpc.unsent_hard_bytes}")
    if rpc.unsent_total_bytes < rpc.unsent_hard_bytes:
        raise ConfigError(f"{source}: rpc.unsent_total_bytes must be at least rpc.unsent_hard_bytes = "
                          f"{rpc.unsent_hard_bytes}, got {rpc.unsent_total_bytes}")


CGROUP_GROUP = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9._-]{1,64}")


def _check_cgroup_group(value: str, source: str) -> None:
    if not CGROUP_GROUP.fullmatch(value):
        raise ConfigError(f"{source}: govern.cgroup_group must be one cgroup name: 1-64 characters of "
                          f"A-Z a-z 0-9 . _ - (not '.' or '..'), got {value!r}")


def local_cgroup_group(base: str) -> str:
    """The job-cgroup group of a `--local` run in `base`: its own, stable per directory."""
    return "aal-core-local-" + hashlib.sha256(os.path.abspath(base).encode()).hexdigest()[:8]


def _check_train_ladder(t: TrainConfig, source: str) -> None:
    """The ladder's rungs must climb: last halving < checkpointing_at < pause_at,
    and a paused run must resume below where it paused."""
    last = t.halve_at + max(0, t.batch_halvings - 1) * t.halve_step
    if t.batch_halvings and not last < t.checkpointing_at:
        raise ConfigError(f"{source}: train.checkpointing_at must be above the last halving's stress "
                          f"(train.halve_at + (batch_halvings - 1) x halve_step = {last:g}), "
                          f"got {t.checkpointing_at}")
    if not t.checkpointing_at < t.pause_at:
        raise ConfigError(f"{source}: train.pause_at must be above train.checkpointing_at = "
                          f"{t.checkpointing_at}, got {t.pause_at}")
    if not t.resume_below < t.pause_at:
        raise ConfigError(f"{source}: train.resume_below must be below train.pause_at = {t.pause_at}, "
                          f"got {t.resume_below}")
_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")


def parse_listen(value: str, source: str = "metrics.listen") -> tuple[str, int] | None:
    """"host:port" (IPv6 in brackets) -> (host, port); "off" -> None."""
    if value == "off":
        return None
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{source}: metrics.listen must be \"host:port\" (e.g. \"127.0.0.1:9469\") "
                          f"or \"off\", got {value!r}")
    return host, int(port)


def _check_exempt(value: str, source: str) -> None:
    for item in value.split(","):
        item = item.strip()
        if item and item not in ("root", "daemon") and not item.isdigit():
            raise ConfigError(f"{source}: budget.exempt: {item!r} is not a uid, 'root' or 'daemon' "
                              f"(a comma-separated list, e.g. \"root,daemon\")")


def load(path: str | None, base: Config | None = None) -> Config:
    """Read a TOML file.  path None → defaults (the file is optional only then)."""
    if path is None:
        return base or Config()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: config file not readable (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_mapping(data, path, base)


def keep_restart_keys(old: Config, new: Config) -> Config:
    """`new`, except for the RESTART_KEYS, which keep their running values."""
    keep: dict[str, dict] = {}
    for s, k in RESTART_KEYS:
        keep.setdefault(s, {})[k] = getattr(getattr(old, s), k)
    return new.with_overrides(keep)


def diff(old: Config, new: Config) -> list[tuple[str, str]]:
    """Keys whose values differ, as (section, key)."""
    out = []
    for f in fields(Config):
        a, b = getattr(old, f.name), getattr(new, f.name)
        for sf in fields(a):
            if getattr(a, sf.name) != getattr(b, sf.name):
                out.append((f.name, sf.name))
    return out
