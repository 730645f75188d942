"""Fleet publishing: the board's samples, events and signed ledger heads on Redis Streams.

    aal-core:<node_id>:samples   stress samples, downsampled to fleet.sample_hz
    aal-core:<node_id>:events    band changes, directives, venom decisions, OOM
                                 kills, sources up/down, the daemon up/down
    aal-core:<node_id>:heads     signed tree heads (ledger.head) every
                                 fleet.head_every_entries entries or
                                 fleet.head_every_s seconds, each with the RFC
                                 9162 consistency proof from the previous head

Two halves that share only a bounded buffer:

    Watcher     reads the daemon (one connection: band changes and venom
                decisions pushed, one batch call per tick for the sample, the
                ledger's length and the sources) and puts entries in the
                buffer; never waits for Redis
    Publisher   drains the buffer into Redis with XADD MAXLEN ~ (pipelined,
                RESP spoken directly: resp.py says why not redis-py);
                while Redis is unreachable it reconnects with backoff (0.5 s
                doubling to fleet.reconnect_max_s) and the buffer holds at most
                fleet.buffer_max entries, dropping the oldest and counting them
                (samples and events first: heads go only when nothing else is left)

Each is one thread (no asyncio: it and redis-py were 9.5 MiB of the
exporter's RSS).  The daemon never waits for either: a slow exporter only
makes the daemon drop (and count) notifications to it.  Every entry has
`type`, `ts` (wall seconds) and `seq` (the exporter's counter, so a
consumer can spot the gap a drop left and duplicates after a retried
pipeline).
"""
from __future__ import annotations

import collections
import json
import selectors
import socket
import threading
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..clock import SYSTEM
from ..client import Client, ConnectError, RpcCallError
from ..log import get_logger
from .resp import Resp, RespError

log = get_logger("export.fleet")

BATCH = 256
POLL_S = 1.0
HEAD_FIELDS = ("size", "root", "timestamp", "signature", "public_key")
PREV_SCAN = 100


def node_id(cfg) -> str:
    return cfg.node_id or socket.gethostname()


def stream_names(node: str) -> dict[str, str]:
    return {k: f"aal-core:{node}:{k}" for k in ("samples", "events", "heads")}


class FleetState:
    """Counters shared by the watcher, the publisher, metrics and status."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.node = node_id(cfg)
        self.streams = stream_names(self.node)
        self.redis_up = False
        self.redis_error = "not connected yet"
        self.published = collections.Counter()
        self.dropped = 0
        self.reconnects = 0
        self.daemon_up = False
        self.daemon_error = "not connected yet"
        self.heads = 0
        self.head_errors = 0
        # The last head on the heads stream (size, root hex) that this
        # board's key signed, found at the first connection among the
        # stream's newest PREV_SCAN heads (read by the publisher, checked by
        # the watcher, which knows the key); heads are linked to it.
        self.prev_head: tuple[int, str] | None = None
        self.prev_candidates: list[dict] = []
        self.prev_known = threading.Event()

    def status(self) -> dict:
        return {"node_id": self.node, "redis_up": self.redis_up, "redis_error": "" if self.redis_up else self.redis_error,
                "daemon_up": self.daemon_up, "daemon_error": "" if self.daemon_up else self.daemon_error,
                "published": dict(self.published), "dropped": self.dropped, "reconnects": self.reconnects,
                "heads": self.heads, "buffer_max": self.cfg.buffer_max}

    def families(self):
        up = GaugeMetricFamily("aal_core_fleet_redis_up", "1 while the exporter's Redis connection works.",
                               value=1.0 if self.redis_up else 0.0)
        yield up
        pub = CounterMetricFamily("aal_core_fleet_published", "Stream entries written to Redis, by stream.",
                                  labels=["stream"])
        for k in ("samples", "events", "heads"):
            pub.add_metric([k], float(self.published[k]))
        yield pub
        yield CounterMetricFamily("aal_core_fleet_dropped", "Entries dropped from the full buffer (oldest first) "
                                  "while Redis was unreachable.", value=float(self.dropped))
        yield CounterMetricFamily("aal_core_fleet_reconnects", "Redis connection failures.",
                                  value=float(self.reconnects))
        yield GaugeMetricFamily("aal_core_fleet_buffer_max_entries", "fleet.buffer_max.",
                                value=float(self.cfg.buffer_max))


class Buffer:
    """Bounded FIFO of (stream kind, fields), shared by two threads; full ->
    the oldest is dropped and counted."""

    def __init__(self, state: FleetState):
        self.state = state
        self.items: collections.deque = collections.deque()
        self.seq = 0
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return len(self.items)

    def put(self, kind: str, fields: dict) -> None:
        f = {"ts": repr(round(SYSTEM.wall(), 6))}
        f.update((k, v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v))
                 for k, v in fields.items() if v is not None)
        with self._cond:
            self.seq += 1
            f["seq"] = str(self.seq)
            self.items.append((kind, f))
            self._trim()
            self._cond.notify()

    def _trim(self) -> None:
        """Drop the oldest sample or event; a head only when nothing else is
        left (heads are rare, and each links the next one)."""
        while len(self.items) > self.state.cfg.buffer_max:
            for i, (kind, _) in enumerate(self.items):
                if kind != "heads":
                    del self.items[i]
                    break
            else:
                self.items.popleft()
            self.state.dropped += 1

    def take(self, n: int) -> list:
        out = []
        with self._cond:
            while self.items and len(out) < n:
                out.append(self.items.popleft())
        return out

    def give_back(self, batch: list) -> None:
        """A batch Redis did not take goes back in front (the bound still holds)."""
        with self._cond:
            self.items.extendleft(reversed(batch))
            self._trim()

    def wait(self, timeout: float) -> None:
        with self._cond:
            if not self.items:
                self._cond.wait(timeout)


class Publisher:
    def __init__(self, state: FleetState, buffer: Buffer):
        self.state, self.buffer = state, buffer
        self.maxlen = {"samples": state.cfg.samples_maxlen, "events": state.cfg.events_maxlen,
                       "heads": state.cfg.heads_maxlen}

    def run(self, stop: threading.Event) -> None:
        st, cfg = self.state, self.state.cfg
        backoff = 0.5
        while not stop.is_set():
            r = Resp(cfg.redis_url, connect_timeout=2.0, timeout=5.0)
            batch: list = []
            try:
                r.command("PING")
                if not st.prev_known.is_set():
                    self._read_prev_head(r)
                if not st.redis_up:
                    log.info("redis_up", url=_safe_url(cfg.redis_url))
                st.redis_up, backoff = True, 0.5
                while not stop.is_set():
                    batch = self.buffer.take(BATCH)
                    if not batch:
                        self.buffer.wait(1.0)
                        continue
                    cmds = []
                    for kind, fields in batch:
                        cmd = ["XADD", st.streams[kind], "MAXLEN", "~", self.maxlen[kind], "*"]
                        for k, v in fields.items():
                            cmd += (k, v)
                        cmds.append(cmd)
                    for reply in r.pipeline(cmds):
                        if isinstance(reply, RespError):
                            raise reply
                    for kind, _ in batch:
                        st.published[kind] += 1
                    batch = []
                self.buffer.give_back(batch)
            except (RespError, OSError, ValueError) as exc:
                self.buffer.give_back(batch)
                if st.redis_up or st.reconnects == 0:
                    log.warning("redis_down", url=_safe_url(cfg.redis_url), error=str(exc) or type(exc).__name__,
                                buffered=len(self.buffer), retry_s=backoff)
                st.redis_up = False
                st.redis_error = str(exc) or type(exc).__name__
                st.reconnects += 1
                r.close()
                stop.wait(backoff)
                backoff = min(backoff * 2, cfg.reconnect_max_s)
            finally:
                r.close()

    def _read_prev_head(self, r: Resp) -> None:
        st = self.state
        got = r.command("XREVRANGE", st.streams["heads"], "+", "-", "COUNT", PREV_SCAN) or []
        cands = []
        for _, flat in got:
            cands.append({flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat) - 1, 2)})
        st.prev_candidates = cands
        st.prev_known.set()


def _safe_url(url: str) -> str:
    """The URL without its password (never logged)."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url


class Watcher:
    """Turns the daemon's state into stream entries (buffer.put); reconnects to it with backoff.

    One connection and one thread: `stress` (mode "band": band changes only)
    and `venom` are pushed; every tick (1 / fleet.sample_hz, and POLL_S for
    the rest) one batch call fetches the sample (stress.get), the ledger's
    length (ledger.manifest) and the sources (sense.sources).  Between ticks
    the thread sleeps in select() on the socket, so a pushed notification is
    handled when it arrives and nothing runs per daemon sample."""

    def __init__(self, socket_path: str, state: FleetState, buffer: Buffer):
        self.socket_path, self.state, self.buffer = socket_path, state, buffer
        self.cfg = state.cfg
        self.band: str | None = None
        self.last_seq = None
        self.ledger_next: int | None = None       # next ledger index to scan for events
        self.head_size = 0
        self.head_t = 0.0
        self.sources: dict[str, bool] = {}
        self.oom_kills: int | None = None
        self.subs: dict[str, str] = {}

    def run(self, stop: threading.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                with Client(self.socket_path, timeout=10.0) as c:
                    if not self.state.daemon_up:
                        self.buffer.put("events", {"type": "daemon_up"})
                    self.state.daemon_up, backoff = True, 0.5
                    self._session(c, stop)
            except (ConnectError, RpcCallError, OSError, ValueError) as exc:
                if self.state.daemon_up:
                    self.buffer.put("events", {"type": "daemon_down", "reason": str(exc)})
                    log.warning("daemon_down", error=str(exc))
                self.state.daemon_up = False
                self.state.daemon_error = str(exc)
            stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    def _session(self, c: Client, stop: threading.Event) -> None:
        self.subs = {c.call("stress.subscribe", {"mode": "band"})["subscription"]: "stress",
                     c.call("venom.subscribe")["subscription"]: "venom"}
        self.band = c.call("stress.get").get("band")
        sample_period = 1.0 / self.cfg.sample_hz
        next_sample = next_poll = time.monotonic()
        sel = selectors.DefaultSelector()
        sel.register(c.sock, selectors.EVENT_READ)
        try:
            while not stop.is_set():
                self._notes(c)
                now = time.monotonic()
                if now >= next_sample or now >= next_poll:
                    calls = []
                    if now >= next_sample:
                        calls.append(("stress.get", None))
                        next_sample = max(next_sample + sample_period, now)
                    if now >= next_poll:
                        calls += [("ledger.manifest", None), ("sense.sources", None)]
                        next_poll = max(next_poll + POLL_S, now)
                    self._tick(c, dict(zip((m for m, _ in calls), c.batch(calls))))
                    self._notes(c)
                # Nothing left unhandled (the client's own buffer included):
                # sleep until the daemon pushes something or the next tick.
                if b"\n" not in c._buf and sel.select(max(0.0, min(next_sample, next_poll) - time.monotonic())):
                    c._keep(c._read_msg())
        finally:
            sel.close()

    def _notes(self, c: Client) -> None:
        """Handle the notifications read so far (kept by the client while it waited for replies)."""
        while c.notifications or b"\n" in c._buf:
            if c.notifications:
                n = c.notifications.popleft()
            else:
                n = c._read_msg()
            params = n.get("params") or {}
            kind = self.subs.get(params.get("subscription"))
            if kind == "stress":
                self._band(params.get("data") or {})
            elif kind == "venom":
                d = params.get("data") or {}
                self.buffer.put("events", {"type": "venom_decision", "action": d.get("action"),
                                           "beat": d.get("beat"), "effect": d.get("effect")})

    def _band(self, d: dict) -> None:
        if self.band is not None and d.get("band") != self.band:
            self.buffer.put("events", {"type": "band_change", "from": self.band, "to": d.get("band"),
                                       "stress": d.get("stress")})
        self.band = d.get("band")

    def _tick(self, c: Client, res: dict) -> None:
        for r in res.values():
            if isinstance(r, RpcCallError):
                raise r
        d = res.get("stress.get")
        if d is not None and d.get("seq") != self.last_seq:
            self.last_seq = d.get("seq")
            self.buffer.put("samples", {"type": "sample", "stress": d["stress"], "band": d["band"],
                                        "seconds_to_exhaustion": d.get("seconds_to_exhaustion"),
                                        "view": d.get("view"), "daemon_seq": d.get("seq")})
        m = res.get("ledger.manifest")
        if m is not None:
            self._ledger_events(c, m["chain_length"])
            self._maybe_head(c, m["chain_length"])
        s = res.get("sense.sources")
        if s is not None:
            self._sources(s)

    def _ledger_events(self, c, length: int) -> None:
        """Directives (and other governance records) as events, from the ledger's new entries."""
        if self.ledger_next is None:
            self.ledger_next = length        # from now on, not the history
            return
        while self.ledger_next < length:
            end = min(length, self.ledger_next + 1000)
            got = c.call("ledger.get", {"start": self.ledger_next, "end": end})
            for e in got["entries"]:
                data = e.get("data") or {}
                if data.get("type") == "govern.directive":
                    self.buffer.put("events", {"type": "directive", "job_id": data.get("job_id"),
                                               "kind": data.get("kind"), "version": data.get("version"),
                                               "reason": data.get("reason"), "ledger_index": e.get("index")})
            self.ledger_next = end

    def _maybe_head(self, c, length: int) -> None:
        st = self.state
        if not st.prev_known.is_set():
            return                 # linked to the stream's last head: wait until Redis said which
        now = time.monotonic()
        if self.head_size and length - self.head_size < self.cfg.head_every_entries \
                and now - self.head_t < self.cfg.head_every_s:
            return
        head = c.call("ledger.head")
        if st.prev_candidates:
            # Only a head this board signed is a base: anyone who can write
            # to Redis can add one that is not.
            from ..ledger.head import verify_head
            good = next((h for h in st.prev_candidates if verify_head(h, public_key=head["public_key"])), None)
            st.prev_candidates = []
            if good is not None:
                st.prev_head = (int(good["size"]), good["root"])
        fields = {k: head[k] for k in HEAD_FIELDS}
        fields["algorithm"] = head.get("algorithm", "ed25519")
        prev = st.prev_head
        if prev is not None:
            fields["prev_size"] = prev[0]
            if prev[0] <= head["size"]:
                try:
                    proof = c.call("ledger.consistency", {"first": prev[0], "second": head["size"]})
                    fields["consistency"] = proof["path"]
                    fields["prev_root"] = proof["first_root"]
                except RpcCallError as exc:
                    fields["consistency_error"] = exc.message
            else:
                fields["consistency_error"] = f"the ledger has {head['size']} entries, fewer than the " \
                                              f"previous head's {prev[0]}"
        self.buffer.put("heads", fields)
        st.prev_head = (head["size"], head["root"])
        st.heads += 1
        self.head_size, self.head_t = head["size"], now

    def _sources(self, s: dict) -> None:
        for src in s["sources"]:
            if src.get("mode") == "off" or src.get("state") == "off":
                continue
            name, up = src["name"], bool(src.get("present"))
            was = self.sources.get(name)
            if was is not None and was != up:
                self.buffer.put("events", {"type": "source_up" if up else "source_down", "source": name,
                                           "reason": src.get("reason")})
            self.sources[name] = up
        kills = int(s.get("anomalies", {}).get("oom_kills", 0))
        if self.oom_kills is not None and kills > self.oom_kills:
            self.buffer.put("events", {"type": "oom_kill", "count": kills - self.oom_kills, "total": kills})
        self.oom_kills = kills
