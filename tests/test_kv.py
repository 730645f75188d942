"""The torch KV cache: eviction policies, directives applied for real, RSS measured."""
import gc

import psutil
import pytest

torch = pytest.importorskip("torch")

from aal_core.client.kv import KVCache, memory_total  # noqa: E402

L, H, D, T = 2, 4, 32, 16
BB = L * 2 * H * T * D * 2           # bytes per block: 16 KiB


def kv_of(i: int) -> torch.Tensor:
    return torch.full((L, 2, H, D), float(i % 1000), dtype=torch.float16)


def make(**kw) -> KVCache:
    kw.setdefault("capacity_bytes", 8 * BB)            # 8 blocks
    kw.setdefault("purge", "ON_EVENT")
    kw.setdefault("min_blocks_per_seq", 1)
    return KVCache(n_layers=L, n_heads=H, head_dim=D, block_tokens=T, **kw)


def fill(c, seq, n, start=0, task=None):
    for i in range(start, start + n):
        c.append(seq, kv_of(i), task_id=task)


def test_block_size_and_capacity_from_cap_fraction():
    c = KVCache(n_layers=L, n_heads=H, head_dim=D, block_tokens=T, cap_fraction=0.5, total_bytes=1 << 20)
    assert c.block_bytes == BB == 16384 and c.capacity_bytes == 1 << 19
    assert 0 < memory_total() <= psutil.virtual_memory().total


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="policy"):
        make(policy="FIFO")
    with pytest.raises(ValueError, match="purge"):
        make(purge="NEVER")
    with pytest.raises(ValueError, match="cap_fraction"):
        KVCache(n_layers=1, n_heads=1, head_dim=1, cap_fraction=0.0)


def test_values_round_trip():
    c = make()
    fill(c, "a", 20)
    k, v = c.get("a")
    assert k.shape == (L, H, 20, D)
    assert [int(k[0, 0, t, 0]) for t in range(20)] == list(range(20))
    k, v = c.get("a", last=5)
    assert [int(x) for x in k[1, 2, :, 3]] == list(range(15, 20)) and v.shape == (L, H, 5, D)


def test_lru_evicts_least_recently_used_sequences_whole():
    c = make(policy="LRU")
    fill(c, "a", 3 * T)
    fill(c, "b", 3 * T)
    c.get("a")                                    # a is now more recent than b
    fill(c, "c", 3 * T)                           # 9 blocks > 8: evict b (LRU), not a
    assert set(c.seqs) == {"a", "c"}
    assert c.local_blocks() <= 8 and c.stats["evicted_blocks"] == 3


def test_window_keeps_the_last_tokens_of_each_sequence():
    c = make(policy="WINDOW")
    fill(c, "a", 6 * T)
    fill(c, "b", 4 * T)                           # 10 blocks > 8: oldest blocks of the longest go
    assert set(c.seqs) == {"a", "b"} and c.local_blocks() == 8
    k, _ = c.get("a")
    assert int(k[0, 0, -1, 0]) == 6 * T - 1       # the newest token is still there
    assert int(k[0, 0, 0, 0]) == 2 * T            # the oldest two blocks were dropped


def test_task_bound_frees_a_task_when_it_ends():
    c = make(policy="TASK_BOUND", capacity_bytes=100 * BB)
    fill(c, "a1", 2 * T, task="A")
    fill(c, "a2", 2 * T, task="A")
    fill(c, "b1", 2 * T, task="B")
    assert c.end_task("A") == 4
    assert set(c.seqs) == {"b1"}


def test_shrink_factor_frees_blocks_now_and_caps_growth():
    c = make(capacity_bytes=100 * BB)
    fill(c, "a", 40 * T)
    assert c.local_blocks() == 40
    res = c.apply({"kind": "APPLY", "metadata": {"kv_shrink_factor": 0.75}})
    assert c.local_blocks() == 30 and res["freed_bytes"] == 10 * BB
    fill(c, "a", 20 * T, start=40 * T)
    assert c.local_blocks() == 30                 # capped where it shrank to
    c.apply({"kind": "APPLY", "metadata": {"kv_shrink_factor": 0.375}})   # 0.75 * 0.5
    assert c.local_blocks() == 15
    c.apply({"kind": "LIFT", "metadata": {"kv_shrink_factor": 1.0}})      # recovered: may grow again
    fill(c, "a", 30 * T, start=60 * T)
    assert c.local_blocks() == 45


def test_max_context_truncates_every_sequence():
    c = make(capacity_bytes=100 * BB)
    fill(c, "a", 10 * T)
    fill(c, "b", 3 * T)
    c.apply({"kind": "APPLY", "metadata": {"max_context_tokens": 2 * T}})
    assert c.tokens("a") == 2 * T and c.tokens("b") == 2 * T
    k, _ = c.get("a")
    assert int(k[0, 0, -1, 0]) == 10 * T - 1
    fill(c, "a", 5 * T, start=10 * T)
    assert c.tokens("a") <= 3 * T


def test_purge_on_stress_and_on_event():
    c = make(purge="ON_STRESS", capacity_bytes=100 * BB)
    fill(c, "old", 2 * T)
    fill(c, "cur", 2 * T)
    assert c.event() == 0                                  # ON_STRESS ignores events
    res = c.apply({"kind": "APPLY", "metadata": {}})
    assert res["purged_blocks"] == 2 and set(c.seqs) == {"cur"}
    e = make(purge="ON_EVENT", capacity_bytes=100 * BB)
    fill(e, "old", 2 * T)
    fill(e, "cur", 2 * T)
    assert e.apply({"kind": "APPLY", "metadata": {}})["purged_blocks"] == 0
    assert e.event("task boundary") == 2 and set(e.seqs) == {"cur"}


def test_offload_cold_moves_blocks_to_disk_and_back_exactly(tmp_path):
    c = make(capacity_bytes=100 * BB, cold_dir=str(tmp_path))
    fill(c, "a", 5 * T)
    fill(c, "b", 5 * T)
    c.apply({"kind": "APPLY", "metadata": {"offload_tier": "COLD"}})
    # a is cold (b was used last): all but its last block left RAM
    assert sum(1 for b in c.seqs["a"].blocks if b.tier == "COLD") == 4
    assert c.local_blocks() == 6
    assert any(p.name.startswith("aal-kv-cold-") for p in tmp_path.iterdir())
    k, v = c.get("a")                                       # brought back on access
    assert [int(k[0, 0, t, 0]) for t in range(5 * T)] == list(range(5 * T))
    assert all(b.tier == "LOCAL" for b in c.seqs["a"].blocks)
    c.close()
    assert not any(tmp_path.iterdir())


def test_offload_extended_is_a_smaller_lower_priority_pool():
    c = make(capacity_bytes=100 * BB)
    fill(c, "a", 5 * T)
    fill(c, "b", 5 * T)
    c.apply({"kind": "APPLY", "metadata": {"offload_tier": "EXTENDED"}})
    assert c.local_blocks() == 6
    assert c.extended_bytes() == 4 * c.block_bytes // 2      # int8: half of fp16
    k, _ = c.get("a")
    assert torch.allclose(k[0, 0, :, 0].float(), torch.arange(5 * T).float(), atol=1.0)


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def test_shrinking_really_returns_memory_to_the_kernel():
    # 256 KiB blocks (above glibc's mmap threshold): 800 of them = 200 MiB
    c = KVCache(n_layers=8, n_heads=8, head_dim=64, block_tokens=16, capacity_bytes=400 << 20,
                purge="ON_EVENT")
    base = _rss()
    tok = torch.ones((8, 2, 8, 64), dtype=torch.float16)
    for i in range(800 * 16):
        c.append(f"s{i % 4}", tok)
    full = _rss()
    assert full - base > 180 << 20
    c.apply({"kind": "APPLY", "metadata": {"kv_shrink_factor": 0.5}})
    half = _rss()
    assert c.used_bytes() <= 100 << 20
    assert full - half > 80 << 20, (base >> 20, full >> 20, half >> 20)
    c.apply({"kind": "APPLY", "metadata": {"offload_tier": "COLD", "kv_shrink_factor": 0.5}})
    cold = _rss()
    assert half - cold > 40 << 20, (half >> 20, cold >> 20)
    c.close()


def test_a_shrink_on_an_empty_cache_keeps_a_working_floor():
    c = make(capacity_bytes=100 * BB, min_blocks_per_seq=4)
    c.apply({"kind": "APPLY", "metadata": {"kv_shrink_factor": 0.5}})      # nothing to shrink yet
    fill(c, "a", 10 * T)
    assert c.local_blocks() == 4                 # capped, but still 4 blocks of context
    k, _ = c.get("a")
    assert int(k[0, 0, -1, 0]) == 10 * T - 1
