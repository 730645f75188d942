"""KVCache keeps running totals of LOCAL blocks and EXTENDED bytes so the
per-token accounting is O(1).  Drive a cache through random mixes of every
operation and check after each step that the totals equal a full recount, so
a path that forgets to update them fails here."""
import random

import pytest
import torch

from aal_core.client.kv import KVCache

L, H, D, T = 1, 2, 8, 4
SEQS = ["a", "b", "c", "d"]
TASKS = [None, "t1", "t2"]


def recount(c: KVCache) -> tuple[int, int]:
    blocks = [b for s in c.seqs.values() for b in s.blocks]
    return (sum(1 for b in blocks if b.tier == "LOCAL"),
            # an EXTENDED block's bytes: int8 values plus its float32 scales
            sum(b.ext[0].numel() + b.ext[1].numel() * b.ext[1].element_size()
                for b in blocks if b.tier == "EXTENDED"))


def check(c: KVCache) -> None:
    assert (c.local_blocks(), c.extended_bytes()) == recount(c)
    assert c.used_bytes() == c.local_blocks() * c.block_bytes
    if c._cold is not None:                  # every COLD slot is either in use or free, once
        used = [b.cold_slot for s in c.seqs.values() for b in s.blocks if b.tier == "COLD"]
        assert sorted(used + c._cold_free) == list(range(c._cold.shape[0]))


def random_directive(r: random.Random) -> dict:
    md = {"offload_tier": r.choice([None, "EXTENDED", "EXTENDED", "COLD", "COLD"])}
    if r.random() < 0.4:
        md["kv_shrink_factor"] = r.choice([1.0, 0.8, 0.5, 0.25])
    if r.random() < 0.3:
        md["max_context_tokens"] = r.choice([None, 6, 13])
    return {"kind": r.choice(["APPLY", "LIFT", "QUARANTINE", "NONE"]), "metadata": md}


def drive(c: KVCache, r: random.Random, steps: int) -> None:
    """A random mix of every public operation, checking the totals after each."""
    check(c)
    for _ in range(steps):
        op = r.choices(["append", "get", "drop", "end_task", "apply", "event", "purge_idle"],
                       weights=[10, 4, 1, 1, 3, 1, 1])[0]
        seq = r.choice(SEQS)
        if op == "append":
            task = r.choice(TASKS)
            for i in range(r.randint(1, 9)):
                c.append(seq, torch.full((L, 2, H, D), float(i), dtype=torch.float16), task_id=task)
                check(c)
        elif op == "get":
            if seq in c.seqs:
                c.get(seq, last=r.choice([None, 1, 5, 11]))
        elif op == "drop":
            c.drop(seq)
        elif op == "end_task":
            c.end_task(r.choice(TASKS[1:]))
        elif op == "apply":
            c.apply(random_directive(r))
        elif op == "event":
            c.event("boundary")
        else:
            c.purge_idle()
        check(c)


@pytest.mark.parametrize("policy", ["LRU", "WINDOW", "TASK_BOUND"])
def test_counters_equal_a_full_recount_after_every_operation(policy):
    totals: dict = {}
    for seed in range(40):
        r = random.Random(f"{policy}-{seed}")                 # reproducible: the seed names the failing run
        bb = L * 2 * H * T * D * 2
        c = KVCache(n_layers=L, n_heads=H, head_dim=D, block_tokens=T, policy=policy,
                    purge=r.choice(["ON_STRESS", "ON_EVENT", "ON_STRESS_OR_EVENT"]),
                    capacity_bytes=r.randint(3, 16) * bb, extended_fraction=r.choice([0.1, 0.25, 0.5]),
                    min_blocks_per_seq=1,
                    window_tokens=r.choice([None, 5, 9]) if policy == "WINDOW" else None)
        try:
            drive(c, r, 60)
        finally:
            c.close()
        assert (c.local_blocks(), c.extended_bytes()) == (0, 0)
        for k, v in c.stats.items():
            totals[k] = totals.get(k, 0) + v
    # The runs must have gone through every path that moves or frees blocks.
    for k in ("evicted_blocks", "purged_blocks", "offloaded_blocks", "restored_blocks"):
        assert totals[k] > 0, (k, totals)
    if policy == "WINDOW":
        assert totals["truncated_blocks"] > 0, totals


def test_the_recount_sees_every_tier():
    """The check above is only as good as the recount: make sure a cache
    really reaches EXTENDED and COLD and the totals move with it."""
    bb = L * 2 * H * T * D * 2
    c = KVCache(n_layers=L, n_heads=H, head_dim=D, block_tokens=T, capacity_bytes=100 * bb,
                extended_fraction=1.0, min_blocks_per_seq=1)
    for i in range(3 * T):
        c.append("old", torch.full((L, 2, H, D), float(i), dtype=torch.float16))
    c.append("new", torch.zeros((L, 2, H, D), dtype=torch.float16))
    c.apply({"kind": "NONE", "metadata": {"offload_tier": "EXTENDED"}})
    # int8 (half the fp16 bytes) plus one float32 scale per head_dim vector
    assert c.local_blocks() == 2 and c.extended_bytes() == 2 * (bb // 2 + L * 2 * H * T * 4)
    check(c)
    c.apply({"kind": "NONE", "metadata": {"offload_tier": "COLD"}})
    c.get("old")                                                        # both EXTENDED blocks come back
    assert (c.local_blocks(), c.extended_bytes()) == (4, 0)
    c.get("new")                                                        # now "old" goes COLD
    assert c.local_blocks() == 2 and sum(b.tier == "COLD" for b in c.seqs["old"].blocks) == 2
    check(c)
    c.apply({"kind": "NONE", "metadata": {"offload_tier": "EXTENDED"}})
    c.get("old")
    c.get("new")                                                        # "old" back, then EXTENDED again
    assert c.local_blocks() == 2 and c.extended_bytes() == 2 * (bb // 2 + L * 2 * H * T * 4)
    assert c.drop("old") == 3 and (c.local_blocks(), c.extended_bytes()) == (1, 0)   # freed EXTENDED blocks
    check(c)
    for i in range(3 * T):
        c.append("old", torch.full((L, 2, H, D), float(i), dtype=torch.float16))
    c.apply({"kind": "NONE", "metadata": {"offload_tier": "COLD"}})
    c.get("new")
    check(c)
    assert c.drop("old") == 3 and (c.local_blocks(), c.extended_bytes()) == (1, 0)
    check(c)                                                            # its COLD slots were given back
    c.close()
