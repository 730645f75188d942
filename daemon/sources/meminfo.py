"""/proc/meminfo: host memory, and on Jetson the NvMap (GPU) and CMA pools.

Read through a kept-open fd by the compiled MeminfoFile (ext/kvfile.pyx),
which also builds the Meminfo from the parsed C values; `from_values` over
KeyedFile's tuple is its pure-Python reference (and its fallback for what is
unusual: tests/test_meminfo_diff.py holds the two to the same values).
On kernels without MemAvailable (< 3.14, e.g. L4T 24 on a TX1) it is
estimated the way earlyoom does (MemFree + Cached + Buffers - Shmem) and the
sample says so (`available_estimated`).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from ..errors import SourceError
from ..kvfile import MeminfoFile
from ._file import KeptOpenReader

KEYS = (b"MemTotal", b"MemFree", b"MemAvailable", b"Buffers", b"Cached", b"SwapTotal", b"SwapFree",
        b"Shmem", b"NvMapMemUsed", b"NvMapMemFree", b"CmaTotal", b"CmaFree")


@dataclass(frozen=True)
class Meminfo:
    """Bytes.  Jetson-only pools are None where the kernel does not print them."""

    total: int
    available: int
    free: int
    buffers: int
    cached: int
    swap_total: int
    swap_free: int
    shmem: int
    available_estimated: bool = False
    nvmap_used: int | None = None
    nvmap_free: int | None = None
    cma_total: int | None = None
    cma_free: int | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


_new = object.__new__


def from_values(vals: tuple, path: str) -> Meminfo:
    """The KEYS values (kB or None) → Meminfo; MemTotal and MemFree are required.

    The fields are set in one dict update instead of through the frozen
    dataclass' __init__, which sets each of the 13 through object.__setattr__
    (about 3 µs of a sample, twice the kernel's read); the object is the same
    frozen Meminfo (tests/test_sense_sources.py compares it with Meminfo(...))."""
    (total, free, avail, buffers, cached, swap_t, swap_f, shmem, nv_u, nv_f, cma_t, cma_f) = vals
    if total is None or free is None:
        missing = ", ".join(k.decode() for k, v in zip(KEYS[:2], (total, free)) if v is None)
        raise SourceError(f"{path}: required field(s) {missing} missing")
    if total == 0:
        raise SourceError(f"{path}: MemTotal is 0")
    estimated = avail is None
    if estimated:
        avail = max(0, free + (cached or 0) + (buffers or 0) - (shmem or 0))
    m = _new(Meminfo)
    m.__dict__.update({
        "total": total * 1024, "available": min(avail, total) * 1024, "free": free * 1024,
        "buffers": (buffers or 0) * 1024, "cached": (cached or 0) * 1024,
        "swap_total": (swap_t or 0) * 1024, "swap_free": (swap_f or 0) * 1024, "shmem": (shmem or 0) * 1024,
        "available_estimated": estimated,
        "nvmap_used": None if nv_u is None else nv_u * 1024, "nvmap_free": None if nv_f is None else nv_f * 1024,
        "cma_total": None if cma_t is None else cma_t * 1024, "cma_free": None if cma_f is None else cma_f * 1024,
    })
    return m


class MeminfoReader(KeptOpenReader):
    name = "meminfo"

    def __init__(self, proc_root: str = "/proc"):
        super().__init__(os.path.join(proc_root, "meminfo"), MeminfoFile, KEYS, Meminfo, from_values)

    def read(self) -> Meminfo:
        try:
            return self._f.sample()
        except OSError as exc:
            raise SourceError(f"{self.path}: read failed: {exc.strerror}") from None
