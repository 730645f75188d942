"""The kept-open file every /proc and cgroup source reads through.

Sources open their file once with a compiled reader (KeyedFile, ValueFile,
PsiFile: ext/*.pyx, pread at offset 0 each round) so a sample costs no
open/close.  What they share is how an OS error is reported: a SourceError
naming the path and what failed, so `sense.sources` can say why.
"""
from __future__ import annotations

from ..errors import SourceError


def open_kept(cls, path: str, *args, hint: str = ""):
    """cls(path, *args); an OSError becomes "<path>: cannot open: <why><hint>"."""
    try:
        return cls(path, *args)
    except OSError as exc:
        raise SourceError(f"{path}: cannot open: {exc.strerror}{hint}") from None


class KeptOpenReader:
    """A source over one kept-open file: subclasses set `name` and turn
    `_values()` into their sample in `read()`."""

    name = "file"

    def __init__(self, path: str, cls, *args, hint: str = ""):
        self.path = path
        self._f = open_kept(cls, path, *args, hint=hint)

    def _values(self):
        try:
            return self._f.read()
        except OSError as exc:
            raise SourceError(f"{self.path}: read failed: {exc.strerror}") from None

    def close(self) -> None:
        self._f.close()
