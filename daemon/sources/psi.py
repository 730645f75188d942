"""Pressure-stall information for memory: /proc/pressure/memory, or a cgroup
v2 memory.pressure.  A secondary input: it lags, and says nothing about fast
anonymous growth without swap until reclaim has already started."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import SourceError
from ..psi import PsiFile
from ._file import KeptOpenReader


@dataclass(frozen=True)
class Psi:
    """Percent of wall time stalled (avg over 10/60/300 s) and total µs;
    `full_*` is None on kernels that print only the "some" line."""

    some_avg10: float
    some_avg60: float
    some_avg300: float
    some_total: int
    full_avg10: float | None = None
    full_avg60: float | None = None
    full_avg300: float | None = None
    full_total: int | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class PsiReader(KeptOpenReader):
    name = "psi"

    def __init__(self, path: str):
        super().__init__(path, PsiFile, hint=" (kernel without PSI, or psi=0?)")

    def read(self) -> Psi:
        v = self._values()
        if v[0] is None or v[3] is None:
            raise SourceError(f"{self.path}: no 'some avg10=... total=...' line")
        return Psi(v[0], v[1] or 0.0, v[2] or 0.0, v[3], v[4], v[5], v[6], v[7])
