"""Group commit: concurrent appends share one write and one fsync.

Appends queue up while a batch is being made durable; when its fsync
returns, everything queued meanwhile goes out as the next batch.  An append
resolves only after its bytes are fsync'd and the high-water mark covering
them is fdatasync'd (chain.Ledger.write_mark).  The fsync runs in a dedicated
worker thread, so the event loop keeps serving while the disk works.

With `group=False` every append gets its own write and fsync (the baseline
bench/ledger.py compares against).
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from ..errors import LedgerError
from ..log import get_logger
from ..metrics import SIZE_BUCKETS, Histogram
from .chain import Ledger

log = get_logger("ledger")


class GroupCommitter:
    def __init__(self, ledger: Ledger, *, group: bool = True, max_batch: int = 1024):
        self.ledger = ledger
        self.group = group
        self.max_batch = max_batch
        self._queue: list = []
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-fsync")
        self.batches = 0
        self.failures = 0
        self.appended = 0
        # submit() to durable, per entry; entries per batch (for metrics()).
        self.append_latency = Histogram()
        self.batch_size = Histogram(SIZE_BUCKETS)

    def submit(self, data) -> "asyncio.Future[tuple[int, str]]":
        """Queue `data`; the future gives (index, hash hex) once durable.
        Data that cannot be an entry raises here, before anything is queued."""
        canon = self.ledger.encode(data)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.append((canon, self.ledger._now(), fut, time.perf_counter()))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            n = self.max_batch if self.group else 1
            items, self._queue[:n] = self._queue[:n], []
            try:
                batch = self.ledger.prepare([(c, t) for c, t, _, _ in items])
                await loop.run_in_executor(self._pool, self.ledger.write, batch)
            except Exception as exc:  # noqa: BLE001 - every waiter gets the error
                self.ledger.abort()
                self.failures += 1
                err = exc if isinstance(exc, LedgerError) else LedgerError(f"append failed: {exc!r}")
                log.error("ledger_append_failed", entries=len(items), reason=str(err),
                          chain_length=self.ledger.count)
                for _, _, f, _ in items:
                    if not f.done():
                        f.set_exception(err)
                continue
            self.ledger.commit(batch)
            self.batches += 1
            self.appended += len(items)
            self.batch_size.observe(len(items))
            now = time.perf_counter()
            observe = self.append_latency.observe
            for i, (_, _, f, t0) in enumerate(items):
                observe(now - t0)
                if not f.done():
                    f.set_result((batch.start + i, batch.hashes[i].hex()))

    async def flush(self) -> None:
        """Wait until everything queued so far is durable (or failed)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def close(self) -> None:
        await self.flush()
        self._pool.shutdown(wait=True)
