"""Concurrent ledger.verify calls share one scan: a client cannot stack
full-CPU verifications on the board it is meant to protect."""
import asyncio
import threading
import time

from aal_core.clock import ManualClock
from aal_core.config import Config
from aal_core.ledger.unit import LedgerUnit
from aal_core.rpc.server import Hub
from aal_core.units import Context


def test_concurrent_verifies_share_one_scan(tmp_path):
    async def main():
        unit = LedgerUnit(Context(config=Config(), clock=ManualClock(), hub=Hub(), state_dir=str(tmp_path)))
        await unit.start()
        for i in range(20):
            await unit.append({"i": i})
        runs = []
        real_check = unit.ledger.check

        def counting_check(snap):
            runs.append(threading.get_ident())
            time.sleep(0.2)              # a long scan, so the calls overlap
            return real_check(snap)

        unit.ledger.check = counting_check
        outs = await asyncio.gather(*(unit.rpc_verify({}, None) for _ in range(5)))
        assert len(runs) == 1
        assert all(o == outs[0] for o in outs) and outs[0]["valid"] is True
        await unit.rpc_verify({}, None)  # the next call after it finished scans again
        assert len(runs) == 2
        await unit.stop()

    asyncio.run(main())
