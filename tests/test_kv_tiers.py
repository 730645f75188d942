"""KV tiers that are what they say (issue 9, part 4).

COLD goes to a disk-backed directory (a tmpfs/ramfs one is refused: its
"offloaded" bytes would still be RAM) and leaves the process's RSS;
EXTENDED is a declared lossy int8 copy in RAM with a stated error bound.
"""
import gc
import os
import warnings

import psutil
import pytest
import torch

from aal_core.client import kv as kvmod
from aal_core.client.kv import KVCache, dequantize_int8, fs_type, quantize_int8, ram_backed

L, H, D, T = 2, 4, 32, 16


def _mount_type(path: str) -> str:
    """The mount's type from /proc/self/mountinfo, parsed here independently."""
    best, typ = "", ""
    real = os.path.realpath(path)
    for line in open("/proc/self/mountinfo"):
        left, _, right = line.partition(" - ")
        mnt = left.split()[4]
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, typ = mnt, right.split()[0]
    return typ


def _tmpfs_dir() -> str:
    for p in ("/dev/shm", "/run"):
        if os.path.isdir(p) and _mount_type(p) == "tmpfs":
            return p
    pytest.skip("no tmpfs mount here to test the refusal on")


def test_statfs_sees_tmpfs_and_a_disk(tmp_path):
    shm = _tmpfs_dir()
    assert kvmod._statfs_type(shm) == kvmod.TMPFS_MAGIC
    assert fs_type(shm) == "tmpfs" and ram_backed(shm)
    disk = "/var/tmp"
    if _mount_type(disk) in ("tmpfs", "ramfs"):
        pytest.skip("/var/tmp is RAM-backed on this machine")
    assert not ram_backed(disk) and fs_type(disk) == _mount_type(disk)
    assert kvmod._mountinfo_type(shm) == "tmpfs"


def test_cold_defaults_to_a_disk_backed_directory(monkeypatch):
    monkeypatch.delenv(kvmod.COLD_DIR_ENV, raising=False)
    if _mount_type("/var/tmp") in ("tmpfs", "ramfs"):
        pytest.skip("/var/tmp is RAM-backed on this machine")
    c = KVCache(n_layers=L, n_heads=H, head_dim=D, block_tokens=T, capacity_bytes=1 << 20)
    assert c._cold_dir == "/var/tmp" and not c.cold_in_ram
    monkeypatch.setenv(kvmod.COLD_DIR_ENV, "/srv")
    assert KVCache(n_layers=L, n_heads=H, head_dim=D, block_tokens=T, capacity_bytes=1 << 20)._cold_dir == "/srv"


def test_a_ram_backed_cold_dir_is_refused_or_warned(monkeypatch):
    shm = _tmpfs_dir()
    kw = dict(n_layers=L, n_heads=H, head_dim=D, block_tokens=T, capacity_bytes=1 << 20)
    with pytest.raises(ValueError, match="is tmpfs: blocks offloaded there stay in RAM"):
        KVCache(cold_dir=shm, **kw)
    with pytest.warns(RuntimeWarning, match="tmpfs"):
        c = KVCache(cold_dir=shm, allow_ram_cold=True, **kw)
    assert c.cold_in_ram
    monkeypatch.setenv(kvmod.COLD_DIR_ENV, shm)         # a default that is RAM: warned, not fatal
    with pytest.warns(RuntimeWarning, match="tmpfs"):
        assert KVCache(**kw).cold_in_ram


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def test_cold_offload_takes_the_bytes_out_of_the_process_rss(tmp_path):
    if ram_backed(str(tmp_path)):
        pytest.skip(f"{tmp_path} is RAM-backed")
    # 256 KiB blocks (mmap'd, so a freed block is unmapped): 4 sequences x 50 blocks = 50 MiB
    c = KVCache(n_layers=8, n_heads=8, head_dim=64, block_tokens=16, capacity_bytes=400 << 20,
                purge="ON_EVENT", cold_dir=str(tmp_path))
    tok = torch.ones((8, 2, 8, 64), dtype=torch.float16)
    for i in range(4 * 50 * 16):
        c.append(f"s{i % 4}", tok)
    before = _rss()
    c.apply({"kind": "APPLY", "metadata": {"offload_tier": "COLD"}})
    after = _rss()
    moved = c.stats["offloaded_blocks"] * c.block_bytes
    assert moved == 3 * 49 * c.block_bytes        # 3 idle sequences, all but their last block: 36.75 MiB
    assert before - after >= 0.8 * moved, (before >> 20, after >> 20, moved >> 20)
    k, _ = c.get("s0")                            # and back, exactly
    assert torch.equal(k, torch.ones_like(k))
    c.close()


def test_extended_int8_error_is_within_its_stated_bound():
    """|x - x'| <= max|x| / 254 of each head_dim vector (round to nearest on
    a 127-level grid), plus fp16's own rounding of the result; an outlier in
    one vector does not spoil the others (a per-block scale would)."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn((L, 2, H, T, D), generator=g) * 2).to(torch.float16)
    x[0, 0, 0, 0, 0] = 300.0                      # one outlier
    q, scale = quantize_int8(x)
    assert q.dtype == torch.int8 and scale.shape == (L, 2, H, T, 1)
    back = dequantize_int8(q, scale, torch.float16).float()
    xf = x.float()
    bound = xf.abs().amax(-1, keepdim=True) / 254 + xf.abs() * 2 ** -11 + 1e-6
    assert bool(((back - xf).abs() <= bound).all())
    # relative RMS error of the vectors without the outlier: under 1 %
    err = (back - xf)[1:].pow(2).mean().sqrt() / xf[1:].pow(2).mean().sqrt()
    assert float(err) < 0.01
    zeros = torch.zeros((2, 3), dtype=torch.float16)
    assert torch.equal(dequantize_int8(*quantize_int8(zeros), torch.float16), zeros)


def test_extended_pool_counts_int8_and_scales():
    c = KVCache(n_layers=L, n_heads=H, head_dim=D, block_tokens=T, capacity_bytes=100 * 16384,
                purge="ON_EVENT", min_blocks_per_seq=1)
    g = torch.Generator().manual_seed(2)
    for sid in ("a", "b"):
        for i in range(5 * T):
            c.append(sid, torch.randn((L, 2, H, D), generator=g).to(torch.float16))
    ref = torch.cat([b.data for b in c.seqs["a"].blocks], dim=3).float()
    c.apply({"kind": "APPLY", "metadata": {"offload_tier": "EXTENDED"}})
    per_block = L * 2 * H * T * D + L * 2 * H * T * 4      # int8 values + float32 scales
    assert c.extended_bytes() == 4 * per_block < 4 * c.block_bytes * 0.6
    k, v = c.get("a")
    got = torch.stack([k, v], dim=1).float()
    assert float((got - ref).abs().max()) <= float(ref.abs().max()) / 254 + 2e-3
