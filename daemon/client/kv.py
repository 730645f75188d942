"""A torch KV cache for a decoder model that obeys aal-core's directives.

Client side only (needs torch; the daemon never imports this module).

Layout: per sequence, a list of fixed-size blocks; a block holds
`block_tokens` tokens of keys and values for every layer, one tensor of shape
(n_layers, 2, n_heads, block_tokens, head_dim).  Each block is its own
allocation (>= 128 KiB, so glibc serves it with mmap and gives it back to the
kernel on free: RSS really goes down; `malloc_trim` is called after
evictions for the rest).

Capacity = KV[CAP=...] x memory total (MemTotal, or the lowest memory
limit of this process's cgroup and its ancestors when lower), times the
directives' `kv_shrink_factor`; `KVCache.from_profile` takes CAP, POLICY and
PURGE from a profile.  Over capacity, blocks are evicted by POLICY:
  LRU         whole least-recently-used sequences (never the one being
              appended to; if it alone is too big, its oldest blocks);
  WINDOW      the oldest blocks of the longest sequences (each keeps its
              last tokens); with `window_tokens` N, every sequence also
              keeps only (the blocks holding) its last N tokens;
  TASK_BOUND  whole tasks, least recently used first; `end_task` frees a
              task's blocks at once.
Directives (`apply`): kv_shrink_factor frees blocks now (the footprint
shrinks by the ratio of the new to the old factor), max_context_tokens
truncates every sequence to its last N tokens, offload_tier moves cold
blocks (of sequences not used in the last step) out of the main pool:
  EXTENDED  quantised to int8 in this process's RAM (there is no CXL or
            other memory tier on a Jetson): a lossy copy, one float32 scale
            per head_dim vector (|error| <= that vector's max|x| / 254),
            0.52x the bytes of fp16 at head_dim 128 (bench/kv.py measures
            both); a separate lower-priority pool with its own capacity
            `extended_fraction` x the nominal one (when it overflows its least
            recently used blocks are dropped, and a purge empties it);
  COLD      written to a file-backed numpy memmap in a disk-backed
            directory (cold_dir, $AAL_KV_COLD_DIR, else /var/tmp; a tmpfs or
            ramfs one is refused, statfs f_type), then dropped from the
            process and the page cache: out of RAM for real;
they come back on access.  PURGE: ON_STRESS purges
idle sequences on an APPLY directive, ON_EVENT on `event()` (and
QUARANTINE), ON_STRESS_OR_EVENT on both.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import tempfile
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..runes import POLICIES, PURGES, PURGES_ON_EVENT, PURGES_ON_STRESS, resolve
from ..sources.cgroup import proc_cgroup

__all__ = ["KVCache", "memory_total", "malloc_trim", "fs_type", "ram_backed", "default_cold_dir",
           "quantize_int8", "dequantize_int8"]

# statfs(2) f_type of the file systems whose files live in RAM.
TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
RAM_FS = {TMPFS_MAGIC: "tmpfs", RAMFS_MAGIC: "ramfs"}
RAM_FS_NAMES = ("tmpfs", "ramfs")
# Where COLD blocks go unless told: a disk-backed directory (/tmp is tmpfs
# on many systems, and a COLD tier there is RAM by another name).
COLD_DIR_ENV = "AAL_KV_COLD_DIR"
COLD_DIR_DEFAULT = "/var/tmp"

_libc = None


def _glibc():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def malloc_trim() -> None:
    """Return free heap memory to the kernel (glibc); a no-op elsewhere."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _fix_mmap_threshold(nbytes: int = 128 * 1024) -> None:
    """Pin glibc's mmap threshold so blocks stay mmap'd (freed = unmapped)
    instead of drifting into the heap after the first frees."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-3, nbytes)      # M_MMAP_THRESHOLD


def _statfs_type(path: str) -> int | None:
    """statfs(2)'s f_type (os.statvfs has no f_type).  f_type is the first
    member of struct statfs, a long (__fsword_t) on Linux; the buffer is
    larger than the struct on every ABI.  None where it cannot be called."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "statfs"):
        return None
    buf = ctypes.create_string_buffer(512)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return None
    return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF


def _mountinfo_type(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The file system type of the mount holding `path` (the longest mount
    point that contains it), from mountinfo."""
    path = os.path.realpath(path)
    best, fstype = -1, None
    try:
        with open(mountinfo) as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                fields_ = left.split()
                if len(fields_) < 5 or not right:
                    continue
                mnt = fields_[4].encode().decode("unicode_escape")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > best:
                    best, fstype = len(mnt), right.split()[0]
    except OSError:
        return None
    return fstype


def fs_type(path: str) -> str | None:
    """"tmpfs", "ramfs", another file system's name (from mountinfo) or None."""
    t = _statfs_type(path)
    if t in RAM_FS:
        return RAM_FS[t]
    return _mountinfo_type(path) if t is None else (_mountinfo_type(path) or hex(t))


def ram_backed(path: str) -> bool:
    """True when files under `path` live in RAM (tmpfs, ramfs)."""
    return fs_type(path) in RAM_FS_NAMES


def default_cold_dir() -> str:
    """$AAL_KV_COLD_DIR, else /var/tmp (disk-backed on a Jetson's and most
    Linux systems' images, unlike /tmp where that is a tmpfs)."""
    return os.environ.get(COLD_DIR_ENV) or COLD_DIR_DEFAULT


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one float32 scale per vector along the last
    dimension (one head's key or value for one token): q = round(x / s),
    s = max|x| / 127.  Lossy: |x - q s| <= s / 2 for every element."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = (xf / scale).round_().clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale).to(dtype)


def _with_ancestors(root: str, path: str) -> list[str]:
    """root/a/b/c -> [root/a/b/c, root/a/b, root/a, root]: a limit anywhere up
    the tree applies to the process."""
    parts = [p for p in path.split("/") if p]
    return [os.path.join(root, *parts[:i]) for i in range(len(parts), -1, -1)]


def memory_total(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> int:
    """Bytes of memory this process can use: MemTotal, or the lowest memory
    limit of its cgroup and the cgroup's ancestors if that is lower."""
    total = 0
    with open(os.path.join(proc_root, "meminfo")) as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    try:
        where = proc_cgroup("self", proc_root)
    except OSError:
        return total
    cand = []
    if "v2" in where:
        cand += [os.path.join(d, "memory.max") for d in _with_ancestors(cgroup_root, where["v2"])]
    if "v1" in where:
        cand += [os.path.join(d, "memory.limit_in_bytes")
                 for d in _with_ancestors(os.path.join(cgroup_root, "memory"), where["v1"])]
    for c in cand:
        try:
            with open(c) as fh:
                v = fh.read().strip()
        except OSError:
            continue
        if v.isdigit() and 0 < int(v) < total:
            total = int(v)
    return total


def _ext_nbytes(ext: tuple) -> int:
    """Bytes of an EXTENDED block: its int8 values and float32 scales."""
    q, scale = ext
    return q.numel() + scale.numel() * scale.element_size()


@dataclass
class _Block:
    data: torch.Tensor | None          # in RAM (LOCAL), or None when offloaded
    tokens: int = 0                    # filled slots
    tier: str = "LOCAL"                # LOCAL, EXTENDED, COLD
    ext: tuple | None = None           # EXTENDED: (int8 tensor, float32 scales)
    cold_slot: int | None = None       # COLD: slot in the memmap


@dataclass
class _Seq:
    seq_id: str
    task_id: str | None
    blocks: list = field(default_factory=list)
    dropped_tokens: int = 0            # evicted from the front
    last_used: int = 0


class KVCache:
    def __init__(self, *, n_layers: int, n_heads: int, head_dim: int, block_tokens: int = 16,
                 cap_fraction: float = 0.2, policy: str = "LRU", purge: str = "ON_STRESS",
                 total_bytes: int | None = None, capacity_bytes: int | None = None,
                 dtype: torch.dtype = torch.float16, cold_dir: str | None = None,
                 extended_fraction: float = 0.5, min_blocks_per_seq: int = 4,
                 window_tokens: int | None = None, allow_ram_cold: bool = False):
        if policy not in POLICIES:
            raise ValueError(f"policy must be LRU, WINDOW or TASK_BOUND, not {policy!r}")
        if purge not in PURGES:
            raise ValueError(f"purge must be ON_STRESS, ON_EVENT or ON_STRESS_OR_EVENT, not {purge!r}")
        if not 0 < cap_fraction <= 1:
            raise ValueError(f"cap_fraction must be in (0, 1], not {cap_fraction}")
        if window_tokens is not None and (policy != "WINDOW" or window_tokens < 1):
            raise ValueError(f"window_tokens is a positive number of tokens, for POLICY=WINDOW only "
                             f"(got {window_tokens!r} with {policy})")
        _fix_mmap_threshold()
        self.shape = (n_layers, 2, n_heads, block_tokens, head_dim)
        self.block_tokens = block_tokens
        self.dtype = dtype
        self.block_bytes = int(np.prod(self.shape)) * torch.empty((), dtype=dtype).element_size()
        self.policy, self.purge = policy, purge
        self.nominal_bytes = capacity_bytes if capacity_bytes is not None else \
            int(cap_fraction * (total_bytes or memory_total()))
        self.shrink = 1.0
        self.capacity_bytes = self.nominal_bytes
        self.max_context: int | None = None
        self.offload_tier: str | None = None
        self.extended_capacity = int(self.nominal_bytes * extended_fraction)
        self.min_blocks_per_seq = min_blocks_per_seq
        self.window_tokens = window_tokens
        self.seqs: dict[str, _Seq] = {}
        # Running totals, kept where blocks are made, freed or change tier,
        # so the per-token accounting is O(1), not a walk over every block.
        self._local = 0                 # LOCAL blocks
        self._ext_bytes = 0             # bytes of the EXTENDED (int8) pool
        self._clock = 0
        # COLD must leave RAM: a tmpfs/ramfs directory given explicitly is
        # refused (allow_ram_cold=True to accept it); the default one, if it
        # turns out RAM-backed, is used with a warning and `cold_in_ram`.
        self._cold_dir = cold_dir or default_cold_dir()
        self.cold_fs = fs_type(self._cold_dir)
        self.cold_in_ram = self.cold_fs in RAM_FS_NAMES
        if self.cold_in_ram:
            msg = (f"COLD tier directory {self._cold_dir} is {self.cold_fs}: blocks offloaded there "
                   f"stay in RAM; give cold_dir (or ${COLD_DIR_ENV}) a disk-backed directory")
            if cold_dir is not None and not allow_ram_cold:
                raise ValueError(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        self._cold: np.memmap | None = None
        self._cold_free: list[int] = []
        self._cold_path: str | None = None
        self.stats = {"evicted_blocks": 0, "purged_blocks": 0, "offloaded_blocks": 0,
                      "restored_blocks": 0, "truncated_blocks": 0, "directives": 0}

    @classmethod
    def from_profile(cls, profile, *, n_layers: int, n_heads: int, head_dim: int, **kw) -> "KVCache":
        """A cache for a profile (a `runes.Profile`, a built-in name or rune
        text): capacity KV[CAP] x memory total, its POLICY and PURGE.  A
        profile without KV[...] gets CAP=0.2, WINDOW, ON_STRESS."""
        spec = (resolve(profile)[1] if isinstance(profile, str) else profile).kv
        return cls(n_layers=n_layers, n_heads=n_heads, head_dim=head_dim,
                   cap_fraction=spec.cap_fraction if spec else 0.2,
                   policy=spec.policy if spec else "WINDOW",
                   purge=spec.purge if spec else "ON_STRESS", **kw)

    # ------------------------------------------------------------ accounting

    def local_blocks(self) -> int:
        return self._local

    def used_bytes(self) -> int:
        """Bytes held in RAM by the main pool."""
        return self.local_blocks() * self.block_bytes

    def extended_bytes(self) -> int:
        return self._ext_bytes

    def tokens(self, seq_id: str) -> int:
        s = self.seqs.get(seq_id)
        return 0 if s is None else sum(b.tokens for b in s.blocks)

    # --------------------------------------------------------------- writes

    def append(self, seq_id: str, kv: torch.Tensor, task_id: str | None = None) -> None:
        """Append one token's keys and values: kv of shape (n_layers, 2, n_heads, head_dim)."""
        s = self.seqs.get(seq_id)
        if s is None:
            s = self.seqs[seq_id] = _Seq(seq_id, task_id)
        self._clock += 1
        s.last_used = self._clock
        if not s.blocks or s.blocks[-1].tokens == self.block_tokens or s.blocks[-1].tier != "LOCAL":
            if s.blocks and s.blocks[-1].tier != "LOCAL":
                self._restore(s.blocks[-1])
            if not s.blocks or s.blocks[-1].tokens == self.block_tokens:
                s.blocks.append(_Block(torch.empty(self.shape, dtype=self.dtype)))
                self._local += 1
        b = s.blocks[-1]
        b.data[:, :, :, b.tokens, :] = kv
        b.tokens += 1
        self._enforce(current=seq_id)

    def end_task(self, task_id: str) -> int:
        """TASK_BOUND: the task ended; free its sequences.  Returns blocks freed."""
        n = 0
        for sid in [k for k, s in self.seqs.items() if s.task_id == task_id]:
            n += self._free_seq(self.seqs.pop(sid))
        self._after_free(n)
        return n

    def drop(self, seq_id: str) -> int:
        s = self.seqs.pop(seq_id, None)
        n = 0 if s is None else self._free_seq(s)
        self._after_free(n)
        return n

    # ---------------------------------------------------------------- reads

    def get(self, seq_id: str, last: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of a sequence (its `last` tokens if given),
        (n_layers, n_heads, tokens, head_dim) each; offloaded blocks read are
        brought back into RAM."""
        s = self.seqs[seq_id]
        self._clock += 1
        s.last_used = self._clock
        parts = []
        need = last
        for b in reversed(s.blocks):
            if need is not None and need <= 0:
                break
            if b.tier != "LOCAL":
                self._restore(b)
            take = b.tokens if need is None else min(b.tokens, need)
            parts.append(b.data[:, :, :, b.tokens - take:b.tokens, :])
            if need is not None:
                need -= take
        parts.reverse()
        if not parts:
            L, _, H, _, D = self.shape
            empty = torch.empty((L, H, 0, D), dtype=self.dtype)
            return empty, empty
        kv = parts[0] if len(parts) == 1 else torch.cat(parts, dim=3)
        self._enforce(current=seq_id)
        return kv[:, 0], kv[:, 1]

    # ------------------------------------------------------------ directives

    def apply(self, directive_or_metadata: dict) -> dict:
        """Apply a directive (or its metadata).  Returns what changed."""
        d = directive_or_metadata
        md = d.get("metadata", d)
        kind = d.get("kind")
        self.stats["directives"] += 1
        before = (self.local_blocks(), self.used_bytes())
        factor = float(md.get("kv_shrink_factor", 1.0) or 1.0)
        if factor < self.shrink:
            # Free now: the footprint shrinks by new/old, and stays capped there.
            target = int(min(self.capacity_bytes, self.used_bytes()) * factor / self.shrink)
            self.capacity_bytes = min(int(self.nominal_bytes * factor), target)
        elif factor > self.shrink:
            self.capacity_bytes = int(self.nominal_bytes * factor)
        self.shrink = factor
        self.max_context = md.get("max_context_tokens")
        self.offload_tier = md.get("offload_tier")
        purged = 0
        if (kind == "APPLY" and self.purge in PURGES_ON_STRESS) or \
                (kind == "QUARANTINE" and self.purge in PURGES_ON_EVENT):
            purged = self.purge_idle()
        self._enforce(current=None)
        after = (self.local_blocks(), self.used_bytes())
        return {"blocks_before": before[0], "blocks_after": after[0], "freed_bytes": before[1] - after[1],
                "capacity_bytes": self.capacity_bytes, "max_context_tokens": self.max_context,
                "offload_tier": self.offload_tier, "purged_blocks": purged}

    def event(self, name: str = "event") -> int:
        """An application event (task boundary, model swap...): purge idle
        sequences when PURGE includes ON_EVENT.  Returns blocks purged."""
        if self.purge in PURGES_ON_EVENT:
            return self.purge_idle()
        return 0

    def purge_idle(self) -> int:
        """Free every sequence except the most recently used one, and the EXTENDED pool."""
        if not self.seqs:
            return 0
        keep = max(self.seqs.values(), key=lambda s: s.last_used).seq_id
        n = 0
        for sid in [k for k in self.seqs if k != keep]:
            n += self._free_seq(self.seqs.pop(sid))
        s = self.seqs[keep]
        for b in s.blocks:
            if b.tier == "EXTENDED":
                self._restore(b)
        self.stats["purged_blocks"] += n
        self._after_free(n)
        return n

    # ------------------------------------------------------------ enforcement

    def _enforce(self, current: str | None) -> None:
        freed = 0
        limit = min((n for n in (self.max_context, self.window_tokens) if n), default=None)
        if limit:
            for s in self.seqs.values():
                freed += self._truncate(s, limit)
        if self.offload_tier in ("EXTENDED", "COLD"):
            self._offload_cold(current)
        # Floor: a few blocks per live sequence, so a shrink that arrives
        # while the cache is nearly empty caps growth without stopping work.
        cap_blocks = max(self.min_blocks_per_seq * max(1, len(self.seqs)),
                         self.capacity_bytes // self.block_bytes)
        excess = self.local_blocks() - cap_blocks
        if excess > 0:
            freed += self._evict(excess, current)
        ext_over = self.extended_bytes() - self.extended_capacity
        if ext_over > 0:
            freed += self._evict_extended(ext_over)
        self._after_free(freed)

    def _truncate(self, s: _Seq, max_tokens: int) -> int:
        n = 0
        while len(s.blocks) > 1 and sum(b.tokens for b in s.blocks[1:]) >= max_tokens:
            b = s.blocks.pop(0)
            s.dropped_tokens += b.tokens
            self._free_block(b)
            n += 1
        self.stats["truncated_blocks"] += n
        return n

    def _evict(self, excess: int, current: str | None) -> int:
        n = 0
        if current is None and self.seqs:
            current = max(self.seqs.values(), key=lambda s: s.last_used).seq_id
        if self.policy in ("LRU", "TASK_BOUND"):
            # LRU: each sequence is its own group; TASK_BOUND: a task's
            # sequences go together (a sequence without a task is its own).
            def group(s: _Seq):
                return s.task_id if self.policy == "TASK_BOUND" and s.task_id is not None else ("seq", s.seq_id)
            groups: dict = {}
            for s in self.seqs.values():
                groups.setdefault(group(s), []).append(s)
            keep = group(self.seqs[current]) if current in self.seqs else None
            victims = sorted((g for k, g in groups.items() if k != keep),
                             key=lambda g: max(s.last_used for s in g))
            for g in victims:                      # the least recently used group first, whole
                if n >= excess:
                    break
                for s in g:
                    n += sum(1 for b in s.blocks if b.tier == "LOCAL")
                    for b in s.blocks:
                        self._free_block(b)
                    del self.seqs[s.seq_id]
        while n < excess:
            # WINDOW (or nothing else left): oldest blocks of the longest sequence
            cands = [s for s in self.seqs.values() if sum(1 for b in s.blocks if b.tier == "LOCAL") > 1]
            if not cands:
                break
            s = max(cands, key=lambda s: (len(s.blocks), s.seq_id != current))
            i = next(i for i, b in enumerate(s.blocks) if b.tier == "LOCAL")
            b = s.blocks.pop(i)
            s.dropped_tokens += b.tokens
            self._free_block(b)
            n += 1
        self.stats["evicted_blocks"] += n
        return n

    def _evict_extended(self, over: int) -> int:
        n = 0
        for s in sorted(self.seqs.values(), key=lambda s: s.last_used):
            for b in list(s.blocks):
                if over <= 0:
                    return n
                if b.tier == "EXTENDED":
                    over -= _ext_nbytes(b.ext)
                    s.blocks.remove(b)
                    s.dropped_tokens += b.tokens
                    self._free_block(b)
                    n += 1
        return n

    # --------------------------------------------------------------- tiers

    def _offload_cold(self, current: str | None) -> None:
        """Blocks of sequences other than the current (most recently used) one
        leave RAM, except each sequence's last (partly filled) block."""
        if not self.seqs:
            return
        hot = current or max(self.seqs.values(), key=lambda s: s.last_used).seq_id
        moved = 0
        for s in self.seqs.values():
            if s.seq_id == hot:
                continue
            for b in s.blocks[:-1]:
                if b.tier == "LOCAL":
                    self._offload(b, self.offload_tier)
                    moved += 1
        if moved and self.offload_tier == "COLD":
            self._cold_sync()

    def _cold_sync(self) -> None:
        """Write the COLD pages to disk and drop them from this process and
        from the page cache: out of RAM for real, not just out of the pool."""
        mm = self._cold._mmap
        mm.flush()
        if hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)
        if hasattr(os, "posix_fadvise"):
            fd = os.open(self._cold_path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def _cold_store(self) -> np.memmap:
        """The COLD tier: a file-backed memmap of block slots, grown by doubling."""
        if self._cold is None or not self._cold_free:
            n_old = 0 if self._cold is None else self._cold.shape[0]
            n_new = max(16, n_old * 2)
            if self._cold_path is None:
                fd, self._cold_path = tempfile.mkstemp(prefix="aal-kv-cold-", dir=self._cold_dir)
                os.close(fd)
            if self._cold is not None:
                self._cold.flush()
            self._cold = None
            with open(self._cold_path, "r+b") as fh:
                fh.truncate(n_new * self.block_bytes)
            self._cold = np.memmap(self._cold_path, dtype=np.uint8, mode="r+", shape=(n_new, self.block_bytes))
            self._cold_free.extend(range(n_new - 1, n_old - 1, -1))
        return self._cold

    def _offload(self, b: _Block, tier: str) -> None:
        if tier == "EXTENDED":
            b.ext = quantize_int8(b.data)
            self._ext_bytes += _ext_nbytes(b.ext)
        else:
            store = self._cold_store()
            slot = self._cold_free.pop()
            store[slot] = b.data.contiguous().view(torch.uint8).reshape(-1).numpy()
            b.cold_slot = slot
        b.data = None
        b.tier = tier
        self._local -= 1
        self.stats["offloaded_blocks"] += 1

    def _restore(self, b: _Block) -> None:
        if b.tier == "EXTENDED":
            b.data = dequantize_int8(*b.ext, self.dtype)
            self._ext_bytes -= _ext_nbytes(b.ext)
            b.ext = None
        elif b.tier == "COLD":
            raw = torch.from_numpy(np.array(self._cold[b.cold_slot]))
            b.data = raw.view(self.dtype).reshape(self.shape).clone()
            self._cold_free.append(b.cold_slot)
            b.cold_slot = None
        b.tier = "LOCAL"
        self._local += 1
        self.stats["restored_blocks"] += 1

    def _free_block(self, b: _Block) -> None:
        if b.tier == "LOCAL":
            self._local -= 1
        elif b.tier == "EXTENDED" and b.ext is not None:
            self._ext_bytes -= _ext_nbytes(b.ext)
        elif b.tier == "COLD" and b.cold_slot is not None:
            self._cold_free.append(b.cold_slot)
        b.data = None
        b.ext = None
        b.cold_slot = None
        b.tier = "FREED"               # freeing twice must not count twice

    def _free_seq(self, s: _Seq) -> int:
        """Free a sequence already taken out of `seqs`.  Returns its block count."""
        for b in s.blocks:
            self._free_block(b)
        return len(s.blocks)

    def _after_free(self, n: int) -> None:
        if n:
            malloc_trim()

    def close(self) -> None:
        self.seqs.clear()
        self._local = self._ext_bytes = 0
        self._cold = None
        if self._cold_path:
            try:
                os.unlink(self._cold_path)
            except OSError:
                pass
            self._cold_path = None
        malloc_trim()
