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


def test_verify_and_reads_while_a_batch_is_being_written(tmp_path):
    """The group committer writes a batch (data fsync, then the mark) in a
    worker thread before it commits it: in that window the store's size has
    grown but the chain has not.  A verify or a read then must see the
    committed chain only (found as a spurious 'stored chain differs' in CI)."""
    from aal_core.ledger.chain import Ledger
    led = Ledger.open(str(tmp_path / "l.aal"))
    for i in range(5):
        led.append({"i": i})
    batch = led.prepare([(led.encode({"i": 99}), led._now())])
    led.write(batch)                      # durable, not yet committed
    assert led.store.size > led.end
    out = led.check(led.snapshot())
    assert out["valid"] is True and out["chain_length"] == 6, out
    assert led.entries(5, 6)[0]["data"] == {"i": 4}
    assert led.entry(5)["data"] == {"i": 4}
    led.commit(batch)
    assert led.entries(6, 7)[0]["data"] == {"i": 99} and led.verify()["valid"] is True
    led.close()
