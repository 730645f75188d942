"""/proc/vmstat: the kernel's global OOM-kill counter (oom_kill, Linux >= 4.13)
and the paging counters that show reclaim trouble."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import SourceError
from ..kvfile import KeyedFile

KEYS = (b"oom_kill", b"pgmajfault", b"pswpin", b"pswpout", b"allocstall_normal", b"allocstall_movable")


@dataclass(frozen=True)
class Vmstat:
    oom_kill: int | None     # None on kernels that do not count OOM kills
    pgmajfault: int
    pswpin: int
    pswpout: int
    allocstall: int


class VmstatReader:
    name = "vmstat"

    def __init__(self, proc_root: str = "/proc"):
        self.path = os.path.join(proc_root, "vmstat")
        try:
            self._f = KeyedFile(self.path, KEYS)
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot open: {exc.strerror}") from None

    def read(self) -> Vmstat:
        try:
            v = self._f.read()
        except OSError as exc:
            raise SourceError(f"{self.path}: read failed: {exc.strerror}") from None
        return Vmstat(oom_kill=v[0], pgmajfault=v[1] or 0, pswpin=v[2] or 0, pswpout=v[3] or 0,
                      allocstall=(v[4] or 0) + (v[5] or 0))

    def close(self) -> None:
        self._f.close()
