"""Where the records live: an append-only file, or memory (benchmarks, tests).

File layout (README "Ledger file format"): the 8-byte magic `AALLDG\\0\\1`,
then one record per entry:

    u32 length (little-endian) | u32 length XOR 0xFFFFFFFF | preimage | 32-byte SHA3-256

`preimage` is the canonical JSON the entry's hash is taken over.  The
length/complement pair makes a damaged frame header distinguishable from a
torn one: a crash can only leave a *prefix* of the last record (or zero
fill), never a complete frame with a wrong check.

A store only moves bytes; it knows nothing of chains (chain.py does).
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os

from ..errors import LedgerError
from .. import ledger_core as _core

MAGIC = _core.MAGIC
HEADER_LEN = 8
HASH_LEN = 32


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _oserror(action: str, path: str, exc: OSError) -> str:
    why = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        why = "no space left on device"
    elif exc.errno == errno.EDQUOT:
        why = "disk quota exceeded"
    return f"{action} {path}: {why}"


def pwrite_all(fd: int, data: bytes, pos: int) -> None:
    """os.pwrite until all of data is at pos (a short write is not an error)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


def create_atomic(path: str, data: bytes, what: str, *, mode: int | None = None, error=LedgerError) -> None:
    """Write data to path.tmp (created afresh, whatever a crash left there:
    0640 less the umask, or exactly `mode` when given, as for a secret),
    fsync, rename over path, fsync the directory: after a crash path either
    does not exist or holds all of data.  A failure removes the temporary
    file and raises error(what ...)."""
    tmp = path + ".tmp"
    try:
        try:
            os.unlink(tmp)      # a leftover of a crash: never reuse its mode
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640 if mode is None else mode)
        try:
            if mode is not None:
                os.fchmod(fd, mode)     # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise error(_oserror(what, path, exc)) from None


class MemoryStore:
    """Records in memory: the same interface, no durability (bench, tests)."""

    path = ":memory:"

    def __init__(self, initial: bytes = b""):
        self._chunks: list[bytes] = [initial] if initial else []
        self.size = len(initial)

    def contents(self, limit: int | None = None) -> bytes:
        blob = b"".join(self._chunks)
        self._chunks = [blob] if blob else []
        return blob if limit is None else blob[:limit]

    def write(self, blob: bytes, offset: int) -> None:
        if offset != self.size:
            raise LedgerError(f"write at {offset}, but the store ends at {self.size}")
        self._chunks.append(blob)
        self.size += len(blob)

    def read(self, offset: int, n: int) -> bytes:
        return self.contents()[offset:offset + n]

    def close(self) -> None:
        pass


class FileStore:
    """The append-only ledger file, locked against a second writer."""

    def __init__(self, path: str, fd: int, size: int):
        self.path = path
        self._fd = fd
        self.size = size          # committed bytes: everything below is fsync'd
        self.broken = ""          # set when a failed write could not be undone

    @classmethod
    def create(cls, path: str, first_records: bytes) -> None:
        """Magic + the first records, written atomically: a ledger file either
        does not exist or starts complete."""
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        except OSError as exc:
            raise LedgerError(_oserror("cannot create ledger", path, exc)) from None
        create_atomic(path, MAGIC + first_records, "cannot create ledger")

    @classmethod
    def open(cls, path: str, *, writable: bool = True) -> "FileStore":
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise LedgerError(_oserror("cannot open ledger", path, exc)) from None
        if writable:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise LedgerError(f"ledger {path} is in use by another process (flock)") from None
        return cls(path, fd, os.fstat(fd).st_size)

    def map(self, size: int | None = None):
        """A read-only mmap of the first `size` bytes (default: committed)."""
        n = self.size if size is None else size
        if n == 0:
            return None
        return mmap.mmap(self._fd, n, prot=mmap.PROT_READ)

    def file_size(self) -> int:
        return os.fstat(self._fd).st_size

    def truncate(self, size: int) -> None:
        """Cut the file to `size` bytes and make that durable."""
        try:
            os.ftruncate(self._fd, size)
            os.fsync(self._fd)
        except OSError as exc:
            raise LedgerError(_oserror("cannot truncate ledger", self.path, exc)) from None
        self.size = size

    def write(self, blob: bytes, offset: int) -> None:
        """Write `blob` at `offset` (the committed end) and fsync.  On any
        failure the file is cut back to `offset`, so a failed append leaves
        no partial record behind; the error names the cause."""
        if self.broken:
            raise LedgerError(self.broken)
        if offset != self.size:
            raise LedgerError(f"write at {offset}, but the ledger ends at {self.size}")
        try:
            pwrite_all(self._fd, blob, offset)
            os.fsync(self._fd)
        except OSError as exc:
            msg = _oserror("cannot append to ledger", self.path, exc)
            try:
                os.ftruncate(self._fd, offset)
                os.fsync(self._fd)
            except OSError as exc2:
                self.broken = (f"{msg}; then could not cut the partial write back "
                               f"({exc2.strerror}): appends are refused until a restart")
                raise LedgerError(self.broken) from None
            raise LedgerError(msg) from None
        self.size = offset + len(blob)

    def read(self, offset: int, n: int) -> bytes:
        try:
            return os.pread(self._fd, n, offset)
        except OSError as exc:
            raise LedgerError(_oserror("cannot read ledger", self.path, exc)) from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
