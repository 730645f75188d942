"""/proc/vmstat: the kernel's global OOM-kill counter (oom_kill, Linux >= 4.13)
and the paging counters that show reclaim trouble."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..kvfile import KeyedFile
from ._file import KeptOpenReader

KEYS = (b"oom_kill", b"pgmajfault", b"pswpin", b"pswpout", b"allocstall_normal", b"allocstall_movable")


@dataclass(frozen=True)
class Vmstat:
    oom_kill: int | None     # None on kernels that do not count OOM kills
    pgmajfault: int
    pswpin: int
    pswpout: int
    allocstall: int


class VmstatReader(KeptOpenReader):
    name = "vmstat"

    def __init__(self, proc_root: str = "/proc"):
        super().__init__(os.path.join(proc_root, "vmstat"), KeyedFile, KEYS)

    def read(self) -> Vmstat:
        v = self._values()
        return Vmstat(oom_kill=v[0], pgmajfault=v[1] or 0, pswpin=v[2] or 0, pswpout=v[3] or 0,
                      allocstall=(v[4] or 0) + (v[5] or 0))
