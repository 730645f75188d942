"""Fleet publishing: the board's samples, events and signed ledger heads on Redis Streams.

    aal-core:<node_id>:samples   stress samples, downsampled to fleet.sample_hz
    aal-core:<node_id>:events    band changes, directives, venom decisions, OOM
                                 kills, sources up/down, the daemon up/down
    aal-core:<node_id>:heads     signed tree heads (ledger.head) every
                                 fleet.head_every_entries entries or
                                 fleet.head_every_s seconds, each with the RFC
                                 9162 consistency proof from the previous head

Two halves that share only a bounded buffer:

    Watcher     reads the daemon (subscriptions and a 1 s poll) and puts entries
                in the buffer; never waits for Redis
    Publisher   drains the buffer into Redis with XADD MAXLEN ~ (pipelined);
                while Redis is unreachable it reconnects with backoff (0.5 s
                doubling to fleet.reconnect_max_s) and the buffer holds at most
                fleet.buffer_max entries, dropping the oldest and counting them
                (samples and events first: heads go only when nothing else is left)

The daemon never waits for either: a slow exporter only makes the daemon
drop (and count) notifications to it.  Every entry has `type`, `ts` (wall
seconds) and `seq` (the exporter's counter, so a consumer can spot the
gap a drop left and duplicates after a retried pipeline).
"""
from __future__ import annotations

import asyncio
import collections
import json
import socket
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..clock import SYSTEM
from ..client import AsyncClient, ConnectError, RpcCallError
from ..log import get_logger

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
        self.prev_known = asyncio.Event()

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
    """Bounded FIFO of (stream kind, fields); full -> the oldest is dropped and counted."""

    def __init__(self, state: FleetState):
        self.state = state
        self.items: collections.deque = collections.deque()
        self.seq = 0
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self.items)

    def put(self, kind: str, fields: dict) -> None:
        self.seq += 1
        f = {"seq": str(self.seq), "ts": repr(round(SYSTEM.wall(), 6))}
        f.update((k, v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v))
                 for k, v in fields.items() if v is not None)
        self.items.append((kind, f))
        self._trim()
        self._ready.set()

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
        while self.items and len(out) < n:
            out.append(self.items.popleft())
        if not self.items:
            self._ready.clear()
        return out

    def give_back(self, batch: list) -> None:
        """A batch Redis did not take goes back in front (the bound still holds)."""
        self.items.extendleft(reversed(batch))
        self._trim()
        if self.items:
            self._ready.set()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            pass


class Publisher:
    def __init__(self, state: FleetState, buffer: Buffer):
        self.state, self.buffer = state, buffer
        self.maxlen = {"samples": state.cfg.samples_maxlen, "events": state.cfg.events_maxlen,
                       "heads": state.cfg.heads_maxlen}

    async def run(self) -> None:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError
        st, cfg = self.state, self.state.cfg
        backoff = 0.5
        while True:
            r = aioredis.from_url(cfg.redis_url, socket_connect_timeout=2.0, socket_timeout=5.0)
            batch: list = []
            try:
                await r.ping()
                if not st.prev_known.is_set():
                    await self._read_prev_head(r)
                if not st.redis_up:
                    log.info("redis_up", url=_safe_url(cfg.redis_url))
                st.redis_up, backoff = True, 0.5
                while True:
                    batch = self.buffer.take(BATCH)
                    if not batch:
                        await self.buffer.wait(1.0)
                        continue
                    pipe = r.pipeline(transaction=False)
                    for kind, fields in batch:
                        pipe.xadd(st.streams[kind], fields, maxlen=self.maxlen[kind], approximate=True)
                    await pipe.execute()
                    for kind, _ in batch:
                        st.published[kind] += 1
                    batch = []
            except asyncio.CancelledError:
                self.buffer.give_back(batch)
                await _close(r)
                raise
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                self.buffer.give_back(batch)
                if st.redis_up or st.reconnects == 0:
                    log.warning("redis_down", url=_safe_url(cfg.redis_url), error=str(exc) or type(exc).__name__,
                                buffered=len(self.buffer), retry_s=backoff)
                st.redis_up = False
                st.redis_error = str(exc) or type(exc).__name__
                st.reconnects += 1
                await _close(r)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, cfg.reconnect_max_s)

    async def _read_prev_head(self, r) -> None:
        st = self.state
        st.prev_candidates = [{k.decode(): v.decode() for k, v in f.items()}
                              for _, f in await r.xrevrange(st.streams["heads"], count=PREV_SCAN)]
        st.prev_known.set()


async def _close(r) -> None:
    try:
        await r.aclose()
    except Exception:  # noqa: BLE001 - closing a broken connection
        pass


def _safe_url(url: str) -> str:
    """The URL without its password (never logged)."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url


class Watcher:
    """Turns the daemon's state into stream entries (buffer.put); reconnects to it with backoff."""

    def __init__(self, socket_path: str, state: FleetState, buffer: Buffer):
        self.socket_path, self.state, self.buffer = socket_path, state, buffer
        self.cfg = state.cfg
        self.last_sample_t = 0.0
        self.band: str | None = None
        self.ledger_next: int | None = None       # next ledger index to scan for events
        self.head_size = 0
        self.head_t = 0.0
        self.sources: dict[str, bool] = {}
        self.oom_kills: int | None = None

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with AsyncClient(self.socket_path) as c:
                    if not self.state.daemon_up:
                        self.buffer.put("events", {"type": "daemon_up"})
                    self.state.daemon_up, backoff = True, 0.5
                    await self._session(c)
            except (ConnectError, RpcCallError, OSError) as exc:
                if self.state.daemon_up:
                    self.buffer.put("events", {"type": "daemon_down", "reason": str(exc)})
                    log.warning("daemon_down", error=str(exc))
                self.state.daemon_up = False
                self.state.daemon_error = str(exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _session(self, c: AsyncClient) -> None:
        _, stress_q = await c.subscribe("stress")
        _, venom_q = await c.subscribe("venom")
        tasks = [asyncio.ensure_future(self._stress(stress_q)), asyncio.ensure_future(self._venom(venom_q)),
                 asyncio.ensure_future(self._poll(c))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
            raise ConnectError("the daemon closed the connection")
        finally:
            for t in tasks:
                t.cancel()

    async def _stress(self, q) -> None:
        period = 1.0 / self.cfg.sample_hz
        while True:
            note = await q.get()
            if note is None:
                return
            d = note["data"]
            if self.band is not None and d["band"] != self.band:
                self.buffer.put("events", {"type": "band_change", "from": self.band, "to": d["band"],
                                           "stress": d["stress"]})
            self.band = d["band"]
            now = time.monotonic()
            if now - self.last_sample_t >= period:
                self.last_sample_t = now
                self.buffer.put("samples", {"type": "sample", "stress": d["stress"], "band": d["band"],
                                            "seconds_to_exhaustion": d.get("seconds_to_exhaustion"),
                                            "view": d.get("view"), "daemon_seq": d.get("seq"),
                                            "dropped": note.get("dropped") or None})

    async def _venom(self, q) -> None:
        while True:
            note = await q.get()
            if note is None:
                return
            d = note["data"]
            self.buffer.put("events", {"type": "venom_decision", "action": d.get("action"), "beat": d.get("beat"),
                                       "effect": d.get("effect")})

    async def _poll(self, c: AsyncClient) -> None:
        while True:
            m = await c.call("ledger.manifest")
            await self._ledger_events(c, m["chain_length"])
            await self._maybe_head(c, m["chain_length"])
            await self._sources(c)
            await asyncio.sleep(POLL_S)

    async def _ledger_events(self, c, length: int) -> None:
        """Directives (and other governance records) as events, from the ledger's new entries."""
        if self.ledger_next is None:
            self.ledger_next = length        # from now on, not the history
            return
        while self.ledger_next < length:
            end = min(length, self.ledger_next + 1000)
            got = await c.call("ledger.get", {"start": self.ledger_next, "end": end})
            for e in got["entries"]:
                data = e.get("data") or {}
                if data.get("type") == "govern.directive":
                    self.buffer.put("events", {"type": "directive", "job_id": data.get("job_id"),
                                               "kind": data.get("kind"), "version": data.get("version"),
                                               "reason": data.get("reason"), "ledger_index": e.get("index")})
            self.ledger_next = end

    async def _maybe_head(self, c, length: int) -> None:
        st = self.state
        if not st.prev_known.is_set():
            return                 # linked to the stream's last head: wait until Redis said which
        now = time.monotonic()
        if self.head_size and length - self.head_size < self.cfg.head_every_entries \
                and now - self.head_t < self.cfg.head_every_s:
            return
        head = await c.call("ledger.head")
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
                    proof = await c.call("ledger.consistency", {"first": prev[0], "second": head["size"]})
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

    async def _sources(self, c) -> None:
        s = await c.call("sense.sources")
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
