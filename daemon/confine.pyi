from typing import Iterable

STEP_NAMES: tuple[str, ...]
AUDIT_ARCH: int
X32_BIT: int
MAX_RULES: int
MAX_RLIMITS: int
MAX_FILTER: int
SYSCALLS: dict[str, int]
STEP_EXEC: int

class Prepared:
    def __init__(self, *, cgroup_procs: str | None = ..., ids: tuple[int, int] | None = ..., umask: int = ...,
                 scratch: str | None = ..., cwd: str | None = ..., rlimits: Iterable[tuple[int, int, int]] = ...,
                 die_with_parent: bool = ..., unshare_net: bool = ..., no_new_privs: bool = ...,
                 landlock: tuple[int, int, int, int, list[tuple[str, int]]] | None = ...,
                 seccomp: bytes = ..., status_fd: int = ...) -> None: ...
    def apply(self) -> None: ...
    def spawn(self, path: str | bytes, argv: Iterable[str | bytes], envp: Iterable[str | bytes],
              stdio: tuple[int, int, int], max_fd: int = ...) -> tuple[int, int, int, int]: ...

def probe(ids: tuple[int, int] | None = ...) -> dict: ...
