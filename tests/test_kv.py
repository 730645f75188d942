"""The torch KV cache: eviction policies, directives applied for real, RSS measured."""
import gc

import os
import subprocess
import sys
import textwrap
import uuid

import psutil
import pytest
import torch          # a declared test dependency (TOOLS/setup.sh --test): never skipped

from aal_core import runes
from aal_core.client.kv import KVCache, memory_total

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


def _meminfo_total() -> int:
    with open("/proc/meminfo") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemTotal:"))


def test_capacity_is_cap_times_memory_total_from_the_profile():
    total = memory_total()
    assert total == _meminfo_total() or total < _meminfo_total()      # a cgroup limit only lowers it
    for name in ("BALANCED", "PERFORMANCE"):
        spec = runes.PROFILES[name].kv
        c = KVCache.from_profile(name, n_layers=L, n_heads=H, head_dim=D, block_tokens=T)
        assert c.capacity_bytes == c.nominal_bytes == int(spec.cap_fraction * total)
        assert (c.policy, c.purge) == (spec.policy, spec.purge)
    rune = "MEM[SOFT=1,HARD=2,VOL=LOW]; KV[CAP=0.05,POLICY=LRU,PURGE=ON_STRESS_OR_EVENT]"
    c = KVCache.from_profile(runes.parse(rune), n_layers=L, n_heads=H, head_dim=D, total_bytes=1 << 30)
    assert c.capacity_bytes == int(0.05 * (1 << 30)) and c.purge == "ON_STRESS_OR_EVENT"
    c = KVCache.from_profile("MINIMAL", n_layers=L, n_heads=H, head_dim=D, total_bytes=1000)   # no KV[...]
    assert (c.capacity_bytes, c.policy, c.purge) == (200, "WINDOW", "ON_STRESS")
    with pytest.raises(runes.ParseError):
        KVCache.from_profile("TURBO", n_layers=L, n_heads=H, head_dim=D)


def test_memory_total_takes_the_lowest_cgroup_limit_up_the_tree(tmp_path):
    proc, cg = tmp_path / "proc", tmp_path / "cg"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal:        4194304 kB\nMemFree:  1 kB\n")     # 4 GiB
    (proc / "self" / "cgroup").write_text("4:memory:/a/b\n0::/u/v\n")
    assert memory_total(str(proc), str(cg)) == 4 << 30                 # no cgroup files: MemTotal
    (cg / "memory" / "a" / "b").mkdir(parents=True)
    (cg / "memory" / "a" / "b" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (cg / "memory" / "a" / "memory.limit_in_bytes").write_text(str(3 << 30))
    assert memory_total(str(proc), str(cg)) == 3 << 30                 # the parent's limit applies
    (cg / "u" / "v").mkdir(parents=True)
    (cg / "u" / "v" / "memory.max").write_text("max\n")
    (cg / "u" / "memory.max").write_text(str(1 << 30))
    assert memory_total(str(proc), str(cg)) == 1 << 30                 # v2 too, lowest wins
    (proc / "self" / "cgroup").unlink()
    assert memory_total(str(proc), str(cg)) == 4 << 30


@pytest.mark.root
def test_capacity_follows_a_real_cgroup_limit():
    """A process in a real memory cgroup of 1 GiB sizes its cache from that."""
    from aal_core.govern.cgroups import CgroupEnforcer
    e = CgroupEnforcer("auto")
    if e.mode == "off":
        pytest.skip(e.note)
    job = "kv-" + uuid.uuid4().hex[:8]
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys
        sys.stdin.readline()                       # wait until placed
        from aal_core.client.kv import KVCache, memory_total
        c = KVCache.from_profile("BALANCED", n_layers=1, n_heads=1, head_dim=8)
        print(memory_total(), c.capacity_bytes, flush=True)
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert e.place(job, child.pid, 1 << 30, 1 << 30)["enforced"] is True
        out, err = child.communicate("go\n", timeout=60)
        assert child.returncode == 0, err
        total, cap = map(int, out.split())
        assert total == 1 << 30 and cap == int(0.2 * (1 << 30))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        e.remove(job)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="policy"):
        make(policy="FIFO")
    with pytest.raises(ValueError, match="purge"):
        make(purge="NEVER")
    with pytest.raises(ValueError, match="cap_fraction"):
        KVCache(n_layers=1, n_heads=1, head_dim=1, cap_fraction=0.0)
    with pytest.raises(ValueError, match="window_tokens"):
        make(policy="LRU", window_tokens=32)
    with pytest.raises(ValueError, match="window_tokens"):
        make(policy="WINDOW", window_tokens=0)


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


def test_window_tokens_keeps_the_last_n_tokens_of_every_sequence():
    c = make(policy="WINDOW", capacity_bytes=100 * BB, window_tokens=2 * T)
    fill(c, "a", 7 * T + 3)
    fill(c, "b", T)
    assert c.tokens("a") == 2 * T + 3 and c.tokens("b") == T      # whole blocks: >= N, < N + one block
    k, _ = c.get("a")
    assert [int(x) for x in k[0, 0, :, 0]] == list(range(5 * T, 7 * T + 3))
    assert c.stats["truncated_blocks"] == 5


def test_task_bound_evicts_whole_tasks_least_recently_used_first():
    c = make(policy="TASK_BOUND")                 # 8 blocks
    fill(c, "a1", 2 * T, task="A")
    fill(c, "b1", 2 * T, task="B")
    fill(c, "a2", 2 * T, task="A")                # task A used after task B
    fill(c, "c1", 3 * T, task="C")                # 9 blocks: task B goes (whole), not a1
    assert set(c.seqs) == {"a1", "a2", "c1"}
    fill(c, "c1", 3 * T, start=3 * T, task="C")   # 10 blocks: task A goes, both its sequences,
    assert set(c.seqs) == {"c1"}                  # though one would have been enough
    assert c.stats["evicted_blocks"] == 2 + 4
    lru = make(policy="LRU")                      # the same under LRU: sequence by sequence
    fill(lru, "a1", 2 * T, task="A")
    fill(lru, "b1", 2 * T, task="B")
    fill(lru, "a2", 2 * T, task="A")
    fill(lru, "c1", 3 * T, task="C")
    assert set(lru.seqs) == {"b1", "a2", "c1"}


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


@pytest.mark.parametrize("purge, on_apply, on_event, on_quarantine", [
    ("ON_STRESS", True, False, False),
    ("ON_EVENT", False, True, True),
    ("ON_STRESS_OR_EVENT", True, True, True),
])
def test_each_purge_mode(purge, on_apply, on_event, on_quarantine):
    def two(c):
        fill(c, "old", 2 * T)
        fill(c, "cur", 2 * T)
        return c
    expect = {True: (2, {"cur"}), False: (0, {"old", "cur"})}
    c = two(make(purge=purge, capacity_bytes=100 * BB))
    assert c.apply({"kind": "LIFT", "metadata": {}})["purged_blocks"] == 0      # recovering never purges
    res = c.apply({"kind": "APPLY", "metadata": {}})
    assert (res["purged_blocks"], set(c.seqs)) == expect[on_apply]
    c = two(make(purge=purge, capacity_bytes=100 * BB))
    assert (c.event("model swap"), set(c.seqs)) == expect[on_event]
    c = two(make(purge=purge, capacity_bytes=100 * BB))
    res = c.apply({"kind": "QUARANTINE", "metadata": {}})
    assert (res["purged_blocks"], set(c.seqs)) == expect[on_quarantine]
    assert c.stats["purged_blocks"] == expect[on_quarantine][0]


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
    # int8 (half of fp16) plus one float32 scale per head_dim vector
    assert c.extended_bytes() == 4 * (c.block_bytes // 2 + L * 2 * H * T * 4)
    k, _ = c.get("a")
    # values 0..79 in vectors of equal values: exact on the int8 grid but for fp16 rounding
    assert torch.allclose(k[0, 0, :, 0].float(), torch.arange(5 * T).float(), atol=0.05)


def test_extended_pool_has_its_own_capacity():
    ext_block = BB // 2 + L * 2 * H * T * 4                         # int8 + scales: 9 KiB
    c = make(capacity_bytes=100 * BB, extended_fraction=0.0235)    # room for 4 such blocks
    for sid in ("a", "b", "c"):
        fill(c, sid, 5 * T)
    c.apply({"kind": "APPLY", "metadata": {"offload_tier": "EXTENDED"}})
    assert c.extended_bytes() <= c.extended_capacity == int(100 * BB * 0.0235)
    assert c.extended_bytes() == 4 * ext_block
    # the least recently used sequence (a) lost its oldest blocks first
    assert c.tokens("a") < 5 * T and c.tokens("b") == 5 * T
    k, _ = c.get("a")
    assert int(k[0, 0, -1, 0]) == 5 * T - 1


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
