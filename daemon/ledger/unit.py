"""LedgerUnit: the daemon's ledger, its group committer and the ledger.* RPC.

At start the file in the state directory is opened and verified against
its high-water mark (in a worker thread; the compiled scanner releases the
GIL).  Anything missing or bad at or below the mark raises LedgerError,
which stops the daemon with exit code 4; a torn write beyond it is cut off.

Interface for other units: `append(data) -> Awaitable[(index, hash)]`,
`manifest() -> dict`, `verified: bool`.
"""
from __future__ import annotations

import asyncio
import os

from ..errors import LedgerError, RpcError, NOT_FOUND, invalid_params
from ..log import get_logger
from ..metrics import family, sample
from ..rpc.budget import CHARGE
from ..rpc.registry import Access
from ..units import Context, Unit
from .canonical import EntryError, format_number
from .chain import MAX_GET, Ledger
from .commit import GroupCommitter
from .head import make_head

log = get_logger("ledger")


class LedgerUnit(Unit):
    name = "ledger"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        cfg = ctx.config.ledger
        self.path = os.path.join(ctx.state_dir, cfg.file)
        self.ledger: Ledger | None = None
        self.committer: GroupCommitter | None = None
        # Set once start() has opened and verified the file: RPC calls that
        # arrive between listen and then wait for it instead of failing.
        self._opened = asyncio.Event()
        self._closed = False
        # The verify running now: concurrent ledger.verify calls share it, so
        # clients cannot stack full-CPU scans on the board.
        self._verifying: asyncio.Future | None = None
        # The daemon's signing key (keys.KeyUnit), set by build_units: it is
        # built after the ledger, which records its rotations.
        self.keys = None
        self.verifications = {"valid": 0, "invalid": 0}
        self.last_verify_s: float | None = None

    # -- the agreed interface ---------------------------------------------

    @property
    def verified(self) -> bool:
        return self.ledger is not None and self.ledger.verified

    def append(self, data: dict) -> "asyncio.Future[tuple[int, str]]":
        """Append `data`; resolves to (index, hash hex) after fsync."""
        if self.committer is None:
            raise LedgerError("the ledger is not open (daemon starting or stopping)")
        charge = CHARGE.get()
        if charge is not None:
            charge.check()   # raises BUDGET_EXCEEDED once the caller's bytes are used up
        fut = self.committer.submit(data)
        if charge is not None:
            self._charge(charge, fut)
        return fut

    # Bytes of a record beyond its canonical data, index and timestamp: frame
    # header (8), hash (32), the preimage's member names and previous hash.
    RECORD_FIXED = 8 + 32 + len(b'{"data":,"index":,"previous_hash":"","timestamp":}') + 64

    def _charge(self, charge, fut) -> None:
        """Charge the calling uid's byte budget with the record's size now
        (so its next call sees it); refund it if the append fails."""
        canon, ts = self.committer._queue[-1][:2]
        base = len(canon) + len(format_number(ts)) + self.RECORD_FIXED
        # The index is known once written; until then, the chain's length.
        estimate = base + len(str(self.ledger.count))
        charge.add(estimate)

        def done(f):
            if f.cancelled() or f.exception() is not None:
                charge.add(-estimate)
                return
            real = base + len(str(f.result()[0]))
            if real != estimate:
                charge.add(real - estimate)
        fut.add_done_callback(done)

    def manifest(self) -> dict:
        if self.ledger is None:
            raise LedgerError("the ledger is not open (daemon starting or stopping)")
        return self.ledger.manifest()

    # -- lifecycle --------------------------------------------------------

    async def start(self) -> None:
        cfg = self.ctx.config.ledger
        loop = asyncio.get_running_loop()
        self.ledger = await loop.run_in_executor(
            None, lambda: Ledger.open(self.path, clock=self.ctx.clock, max_entry_bytes=cfg.max_entry_bytes))
        self.committer = GroupCommitter(self.ledger, group=cfg.group_commit, max_batch=cfg.max_batch)
        self.last_verify_s = getattr(self.ledger, "open_verify_s", None)
        self._opened.set()

    async def stop(self) -> None:
        self._closed = True
        self._opened.set()
        if self.committer is not None:
            await self.committer.close()
            self.committer = None
        if self.ledger is not None:
            self.ledger.close()

    def ready(self) -> bool:
        return self.ledger is not None

    def reload(self, config) -> None:
        super().reload(config)
        cfg = config.ledger
        if self.ledger is not None:
            self.ledger.max_entry_bytes = cfg.max_entry_bytes
        if self.committer is not None:
            self.committer.group = cfg.group_commit
            self.committer.max_batch = cfg.max_batch

    def metrics(self) -> list[dict]:
        """Entries, appends, append latency, group-commit batch size, verify results."""
        if self.ledger is None:
            return []
        led, c = self.ledger, self.committer
        out = [
            family("aal_core_ledger_entries", "gauge", "Entries in the chain (genesis included).", float(led.count)),
            family("aal_core_ledger_bytes", "gauge", "Committed bytes of the ledger file.", float(led.end)),
            family("aal_core_ledger_verified", "gauge",
                   "1 while the chain verified (at start and by the last ledger.verify), else 0.",
                   1.0 if led.verified else 0.0),
            family("aal_core_ledger_verifications_total", "counter", "ledger.verify runs, by result.",
                   [sample(float(n), {"result": k}) for k, n in sorted(self.verifications.items())]),
        ]
        if self.last_verify_s is not None:
            out.append(family("aal_core_ledger_verify_duration_seconds", "gauge",
                              "Duration of the last ledger.verify.", self.last_verify_s))
        if c is not None:
            out += [
                family("aal_core_ledger_appends_total", "counter", "Entries appended since start.", float(c.appended)),
                family("aal_core_ledger_commit_failures_total", "counter", "Batches whose write or fsync failed.",
                       float(c.failures)),
                family("aal_core_ledger_append_latency_seconds", "histogram",
                       "From append to durable (fsync and high-water mark), per entry.", c.append_latency.value()),
                family("aal_core_ledger_group_commit_batch_size", "histogram",
                       "Entries per group-commit batch (one write and fsync each).", c.batch_size.value()),
            ]
        return out

    def summary(self) -> str:
        if self.ledger is None:
            return "ledger opening"
        return f"ledger {self.ledger.count} entries"

    # -- RPC ---------------------------------------------------------------

    async def _open(self) -> Ledger:
        if not self._opened.is_set():
            timeout = self.ctx.config.daemon.ready_timeout_s
            try:
                await asyncio.wait_for(self._opened.wait(), timeout)
            except asyncio.TimeoutError:
                raise LedgerError(f"the ledger is still being opened and verified after {timeout}s") from None
        if self.ledger is None or self._closed:
            raise LedgerError("the ledger is not open (daemon stopping)")
        return self.ledger

    def register(self, registry) -> None:
        registry.add("ledger.append", self.rpc_append, params="LedgerAppendParams",
                     result="LedgerAppendResult", access=Access.WRITE,
                     example={"data": {"type": "example", "note": "appended by an example call"}})
        registry.add("ledger.manifest", self.rpc_manifest, result="LedgerManifest")
        registry.add("ledger.get", self.rpc_get, params="LedgerGetParams", result="LedgerGetResult",
                     example={"start": 0, "end": 2})
        registry.add("ledger.verify", self.rpc_verify, result="LedgerVerifyResult")
        registry.add("ledger.proof", self.rpc_proof, params="LedgerProofParams", result="LedgerProofResult",
                     example={"index": 0})
        registry.add("ledger.head", self.rpc_head, result="LedgerHead")
        registry.add("ledger.consistency", self.rpc_consistency, params="LedgerConsistencyParams",
                     result="LedgerConsistencyResult", example={"first": 1})

    async def rpc_append(self, p, call):
        """Append {"data": {...}}; answers {index, hash} once the entry is fsync'd."""
        if "data" not in p:
            raise invalid_params("missing required param: data", missing=["data"])
        await self._open()
        try:
            fut = self.append(p["data"])
        except EntryError as exc:
            raise invalid_params(str(exc), param="data") from None
        index, digest = await fut
        return {"index": index, "hash": digest}

    async def rpc_manifest(self, p, call):
        """chain_length, genesis_hash, latest_hash, merkle_root, timestamp."""
        return (await self._open()).manifest()

    async def rpc_get(self, p, call):
        """Entries by `index`, or `start`..`end` (exclusive, at most 1000)."""
        led = await self._open()
        if "index" in p:
            if "start" in p or "end" in p:
                raise invalid_params("give either index, or start and end, not both")
            i = p["index"]
            if i >= led.count:
                raise RpcError(NOT_FOUND, f"no entry {i}: the chain has {led.count} entries",
                               {"index": i, "chain_length": led.count})
            return {"entries": [led.entry(i)]}
        if "start" not in p:
            raise invalid_params("give index, or start (and end)", expected=["index", "start", "end"])
        start = p["start"]
        if "end" in p:
            if p["end"] < start:
                raise invalid_params(f"end ({p['end']}) is before start ({start})", param="end")
            if p["end"] - start > MAX_GET:
                raise invalid_params(f"at most {MAX_GET} entries per call; asked for {p['end'] - start}",
                                     param="end", max=MAX_GET)
        if start > led.count:
            raise RpcError(NOT_FOUND, f"start {start} is past the end of the chain ({led.count} entries)",
                           {"start": start, "chain_length": led.count})
        end = p.get("end", min(start + MAX_GET, led.count))
        return {"entries": led.entries(start, end)}

    async def rpc_verify(self, p, call):
        """Recompute every hash, link and the Merkle root; name the first bad index."""
        led = await self._open()
        if self._verifying is None or self._verifying.done():
            self._verifying = asyncio.ensure_future(self._verify(led))
        return await asyncio.shield(self._verifying)

    async def _verify(self, led: Ledger) -> dict:
        snap = led.snapshot()
        out = await asyncio.get_running_loop().run_in_executor(None, led.check, snap)
        led.verified = out["valid"]
        self.verifications["valid" if out["valid"] else "invalid"] += 1
        self.last_verify_s = float(out.get("seconds", 0.0))
        if not out["valid"]:
            log.error("ledger_verify_failed", index=out.get("first_bad_index"), reason=out.get("reason"))
        return out

    async def rpc_head(self, p, call):
        """A signed tree head: size, Merkle root, timestamp (ms), Ed25519 signature, public key."""
        led = await self._open()
        if self.keys is None or self.keys.key is None:
            raise LedgerError("no signing key loaded (daemon starting)")
        size = led.count
        return make_head(size, led.root(size), int(self.ctx.clock.wall() * 1000), self.keys.sign,
                         self.keys.public_hex)

    async def rpc_proof(self, p, call):
        """RFC 9162 inclusion proof of entry `index` in the tree of `tree_size` entries."""
        led = await self._open()
        n = p.get("tree_size", led.count)
        self._check_sizes(led, n)
        if p["index"] >= n:
            raise invalid_params(f"index {p['index']} is not below tree_size {n}", param="index")
        return led.proof(p["index"], n)

    async def rpc_consistency(self, p, call):
        """RFC 9162 consistency proof between tree sizes `first` and `second`."""
        led = await self._open()
        m = p.get("second", led.count)
        self._check_sizes(led, m)
        if not 1 <= p["first"] <= m:
            raise invalid_params(f"need 1 <= first <= second, got first={p['first']}, second={m}",
                                 param="first")
        return led.consistency(p["first"], m)

    @staticmethod
    def _check_sizes(led: Ledger, n: int) -> None:
        if n < 1:
            raise invalid_params("a tree size is at least 1", param="tree_size")
        if n > led.count:
            raise RpcError(NOT_FOUND, f"tree size {n} is larger than the chain ({led.count} entries)",
                           {"tree_size": n, "chain_length": led.count})
