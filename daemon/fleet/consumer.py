"""Reading the fleet's streams with a consumer group (client side, redis-py asyncio).

    consumer = FleetConsumer(redis, group="ops", name="host-a")
    await consumer.discover()            # every aal-core:<node>:{samples,events,heads}
    await consumer.poll()                # claim what dead consumers left, read, process, ack
    consumer.boards["jetson-07"]         # latest sample, band, events, head, issues

Each entry is processed, then XACKed: an entry read by a consumer that died
before acking stays pending, and the next poll of any consumer in the group
claims it with XAUTOCLAIM (idle longer than min_idle_ms) and processes it,
not just acknowledges it.

Every head is checked (check_head): its Ed25519 signature over the 70 signed
bytes (aal_core.ledger.head), the board's key (pinned at the first head
seen), and that it extends the last head this group verified for the board
by the RFC 9162 consistency proof the exporter publishes with it.  The last
verified head per board lives in Redis (hash aal-core:fleet:<group>:heads),
so the check holds whichever consumer of the group gets the next head.  A
board whose ledger was rewritten, or a forged head, lands in its `issues`;
a head the proof cannot link (the exporter's previous head never reached
Redis) is "unlinked" and becomes the base, except after a rewrite: then
every later head is flagged until an operator removes the board's field
from that hash.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..clock import SYSTEM
from ..ledger.head import verify_head
from ..ledger.proofs import check_consistency

KINDS = ("samples", "events", "heads")


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def parse_stream(key: str) -> tuple[str, str] | None:
    """"aal-core:<node>:<kind>" -> (node, kind)."""
    parts = key.split(":")
    if len(parts) != 3 or parts[0] != "aal-core" or parts[2] not in KINDS or parts[1] == "fleet":
        return None
    return parts[1], parts[2]


@dataclass
class Board:
    node: str
    sample: dict | None = None
    events: list = field(default_factory=list)     # the last 50
    head: dict | None = None
    heads_verified: int = 0
    issues: list = field(default_factory=list)     # {"kind", "reason", "size"}
    last_seen: float = 0.0
    gaps: int = 0                                  # entries missing by seq (dropped by the exporter)
    _seq: int = 0

    def to_dict(self) -> dict:
        return {"node": self.node, "sample": self.sample, "head": self.head, "heads_verified": self.heads_verified,
                "issues": self.issues, "events": self.events[-10:], "last_seen": self.last_seen, "gaps": self.gaps}


def check_head(head: dict, last: dict | None) -> tuple[str, str] | None:
    """None when `head` is good and extends `last` (the last verified head,
    {size, root, public_key}); else (issue kind, reason).  Kinds:
    forged (bad signature or malformed), key_changed, rewritten (not a
    consistent extension), unlinked (proof from a head this group never saw)."""
    if not verify_head(head):
        return "forged", "the signature does not verify over size, root and timestamp"
    if last is None:
        return None
    if head["public_key"] != last["public_key"]:
        return "key_changed", f"signed by {head['public_key'][:16]}..., the board's key was {last['public_key'][:16]}..."
    size, root = int(head["size"]), head["root"]
    if size < last["size"]:
        return "rewritten", f"the ledger shrank from {last['size']} to {size} entries"
    if size == last["size"]:
        if root != last["root"]:
            return "rewritten", f"same size {size}, different root"
        return None
    if head.get("consistency_error"):
        return "rewritten", f"no consistency proof: {head['consistency_error']}"
    prev_size = head.get("prev_size")
    if prev_size is None or "consistency" not in head:
        return "unlinked", "no consistency proof with the head"
    if int(prev_size) != last["size"]:
        return "unlinked", f"proof from size {prev_size}, the last verified head has size {last['size']}"
    proof = {"first": last["size"], "second": size, "first_root": last["root"], "second_root": root,
             "path": head["consistency"]}
    if not check_consistency(proof):
        return "rewritten", f"the head at {size} is not a consistent extension of the one at {last['size']}"
    return None


def decode_fields(raw: dict) -> dict:
    d = {_s(k): _s(v) for k, v in raw.items()}
    if "consistency" in d:
        try:
            d["consistency"] = json.loads(d["consistency"])
        except ValueError:
            d["consistency"] = None
    for k in ("size", "timestamp", "prev_size", "seq"):
        if k in d:
            try:
                d[k] = int(d[k])
            except ValueError:
                pass
    return d


class FleetConsumer:
    def __init__(self, redis, group: str = "aal-core-fleet", name: str = "consumer-1", *,
                 min_idle_ms: int = 30000, count: int = 100, on_entry=None):
        self.r = redis
        self.group, self.name = group, name
        self.min_idle_ms, self.count = min_idle_ms, count
        self.boards: dict[str, Board] = {}
        self.streams: list[str] = []
        self.processed: list[tuple[str, str]] = []     # (stream, id), the last 10000
        self.claimed = 0
        self.on_entry = on_entry                        # fn(node, kind, id, fields, issue)
        self.verified_key = f"aal-core:fleet:{group}:heads"

    async def discover(self) -> list[str]:
        """Every board's streams; the group is created on each (from the start)."""
        from redis.exceptions import ResponseError
        found = []
        async for key in self.r.scan_iter(match="aal-core:*", count=500):
            k = _s(key)
            if parse_stream(k) is not None:
                found.append(k)
        for k in found:
            if k not in self.streams:
                try:
                    await self.r.xgroup_create(k, self.group, id="0", mkstream=True)
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                self.streams.append(k)
        return self.streams

    async def claim(self) -> int:
        """Entries pending on a dead consumer for longer than min_idle_ms: claim and process them."""
        n = 0
        for s in self.streams:
            start = "0-0"
            while True:
                res = await self.r.xautoclaim(s, self.group, self.name, self.min_idle_ms, start_id=start,
                                              count=self.count)
                start, entries = _s(res[0]), res[1]
                for eid, fields in entries:
                    if fields is None:          # deleted by MAXLEN trimming meanwhile
                        await self.r.xack(s, self.group, eid)
                        continue
                    await self._handle(s, _s(eid), fields)
                    n += 1
                if start == "0-0" or not entries:
                    break
        self.claimed += n
        return n

    async def read(self, block_ms: int | None = None) -> int:
        if not self.streams:
            return 0
        got = await self.r.xreadgroup(self.group, self.name, {s: ">" for s in self.streams}, count=self.count,
                                      block=block_ms)
        n = 0
        for stream, entries in got or []:
            for eid, fields in entries:
                await self._handle(_s(stream), _s(eid), fields)
                n += 1
        return n

    async def poll(self, block_ms: int | None = None) -> int:
        await self.discover()
        return await self.claim() + await self.read(block_ms)

    async def drain(self) -> int:
        """Poll until nothing is left (for `aalctl fleet status`)."""
        total = 0
        while True:
            n = await self.poll()
            total += n
            if n == 0:
                return total

    async def fill_latest(self) -> None:
        """Boards with nothing new for this group since its last read: their
        latest sample and last verified head, so that a status shows every
        board, not only those that published since (`aalctl fleet status`
        run twice in a row showed only the board that had sampled between)."""
        for s in self.streams:
            node, kind = parse_stream(s)
            b = self.boards.get(node)
            if b is None:
                b = self.boards[node] = Board(node)
            if kind == "samples" and b.sample is None:
                got = await self.r.xrevrange(s, count=1)
                if got:
                    b.sample = decode_fields(got[0][1])
            elif kind == "heads" and b.head is None:
                raw = await self.r.hget(self.verified_key, node)
                if raw:
                    b.head = json.loads(raw)

    async def _handle(self, stream: str, eid: str, raw: dict) -> None:
        node, kind = parse_stream(stream)
        b = self.boards.get(node)
        if b is None:
            b = self.boards[node] = Board(node)
        f = decode_fields(raw)
        b.last_seen = SYSTEM.wall()
        seq = f.get("seq")
        if isinstance(seq, int):
            if b._seq and seq > b._seq + 1:
                b.gaps += seq - b._seq - 1
            b._seq = max(b._seq, seq)
        issue = None
        if kind == "samples":
            b.sample = f
        elif kind == "events":
            b.events.append(f)
            del b.events[:-50]
        else:
            issue = await self._head(b, f)
        if self.on_entry is not None:
            self.on_entry(node, kind, eid, f, issue)
        await self.r.xack(stream, self.group, eid)
        self.processed.append((stream, eid))
        del self.processed[:-10000]

    async def _head(self, b: Board, f: dict):
        raw_last = await self.r.hget(self.verified_key, b.node)
        last = json.loads(raw_last) if raw_last else None
        bad = check_head(f, last)
        if bad is None:
            b.head = f
            b.heads_verified += 1
            await self.r.hset(self.verified_key, b.node,
                              json.dumps({"size": int(f["size"]), "root": f["root"], "public_key": f["public_key"]}))
            return None
        kind, reason = bad
        if kind == "unlinked" and last is not None and last.get("rewritten"):
            # After a rewrite nothing new becomes the base by itself: an
            # operator clears the board (HDEL) once the cause is known.
            kind, reason = "rewritten", f"{reason}; the board's ledger was found rewritten before"
        issue = {"kind": kind, "reason": reason, "size": f.get("size"), "entry_ts": f.get("ts")}
        b.issues.append(issue)
        del b.issues[:-100]
        if kind == "rewritten" and last is not None and not last.get("rewritten"):
            await self.r.hset(self.verified_key, b.node, json.dumps({**last, "rewritten": True}))
        if kind == "unlinked":
            # Nothing proves it wrong either: it becomes the base the next head must extend.
            b.head = f
            await self.r.hset(self.verified_key, b.node,
                              json.dumps({"size": int(f["size"]), "root": f["root"], "public_key": f["public_key"]}))
        return issue
