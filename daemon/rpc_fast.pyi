"""Type stubs for the compiled aal_core.rpc_fast (ext/rpc_fast.pyx)."""
from typing import Any, Callable

class Framer:
    pending: int
    def __init__(self, max_frame_bytes: int, too_large: Callable[[int, int], Any]) -> None: ...
    def feed(self, data: bytes) -> list: ...

class FastDispatch:
    def __init__(self, dispatcher: Any, methods: dict, map_exception: Callable, isawaitable: Callable) -> None: ...
    def handle(self, frame: bytes, call: Any) -> Any: ...

class Histogram:
    bounds: tuple
    counts: list[int]
    sum: float
    count: int
    def __init__(self, bounds: Any) -> None: ...
    def observe(self, value: float) -> None: ...
    def value(self) -> dict: ...

class MethodCalls:
    ok: int
    error: int
    denied: int
    latency: Histogram
    def __init__(self, bounds: Any) -> None: ...
    def done(self, ok: bool, seconds: float) -> None: ...

def drain(conn: Any, backlog: Any, handle: Callable, call: Any, out: list, room: int, max_inflight: int,
          server: Any) -> int: ...

def round3(x: float) -> float: ...

class ConnectionCore:
    """Base of server.Connection: its per-read path in C."""
    server: Any
    transport: Any
    framer: Any
    call: Any
    backlog: Any
    inflight: set
    closing: bool
    paused: bool
    reading: bool
    unsent: int
    max_inflight: int
    last_activity: float
    def data_received(self, data: bytes) -> None: ...
    def _process(self) -> None: ...
