"""The two ways an overlay is run: a process (proc) or a local HTTP service (http).

Both take the canonical JSON request and return an `Outcome`: the overlay's
JSON object, or an error with an overlay error code (errors.py, -32020..)
and data saying what happened (exit status, signal, stderr's tail, HTTP
status).  Neither raises for anything the overlay does.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass, field

from .. import errors as E



@dataclass
class Outcome:
    ok: bool
    result: dict | None = None
    error: dict | None = None      # {code, message, data?}
    info: dict = field(default_factory=dict)   # exit_status, signal, stdout_bytes, ...

    @classmethod
    def fail(cls, code: int, message: str, **data) -> "Outcome":
        err = {"code": code, "message": message}
        if data:
            err["data"] = data
        return cls(ok=False, error=err, info=dict(data))


class SpawnRefused(Exception):
    """The process could not be started as its confinement requires: (code, message)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def parse_output(raw: bytes, where: str) -> Outcome:
    """One JSON object (surrounding whitespace allowed), or BAD_OUTPUT."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        head = raw[:120].decode("utf-8", "replace")
        return Outcome.fail(E.OVERLAY_BAD_OUTPUT, f"{where} is not one JSON object: {exc}",
                            output_head=head, output_bytes=len(raw))
    if not isinstance(obj, dict):
        return Outcome.fail(E.OVERLAY_BAD_OUTPUT, f"{where} is JSON {type(obj).__name__}, not an object",
                            output_bytes=len(raw))
    return Outcome(ok=True, result=obj, info={"output_bytes": len(raw)})


# ------------------------------------------------------------------ proc

async def _read_bounded(stream, limit: int, over: asyncio.Event) -> tuple[bytes, int]:
    """Read to EOF keeping at most `limit` bytes; sets `over` past it and stops."""
    chunks, n = [], 0
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            break
        n += len(chunk)
        if n > limit:
            keep = limit - (n - len(chunk))
            if keep > 0:
                chunks.append(chunk[:keep])
            over.set()
            break
        chunks.append(chunk)
    return b"".join(chunks), n


async def _read_tail(stream, keep: int) -> tuple[bytes, int]:
    buf, n = b"", 0
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return buf, n
        n += len(chunk)
        buf = (buf + chunk)[-keep:]


def _killpg(pgid: int) -> bool:
    try:
        os.killpg(pgid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False


async def run_proc(spawn, argv: list[str], request: bytes, *, timeout_s: float, max_stdout: int,
                   max_stderr: int, kill_leftovers=None) -> Outcome:
    """Run one call: `spawn(argv)` is a coroutine returning an asyncio Process
    (pipes, its own process group).  The request goes to stdin; stdout must be
    one JSON object (at most `max_stdout` bytes); stderr is read to its end,
    its last `max_stderr` bytes kept.  On timeout, an over-long output, or once the process has
    exited, its whole process group is SIGKILLed (a child that outlives the
    overlay dies with it); `kill_leftovers()` (the cgroup's) catches the ones
    that left the group."""
    t0 = time.monotonic()
    try:
        proc = await spawn(argv)
    except SpawnRefused as exc:
        return Outcome.fail(exc.code, str(exc), argv0=argv[0])
    except OSError as exc:
        return Outcome.fail(E.OVERLAY_CRASHED, f"cannot start {argv[0]}: {exc.strerror or exc}",
                            argv0=argv[0])
    pgid = proc.pid
    over = asyncio.Event()
    out_task = asyncio.ensure_future(_read_bounded(proc.stdout, max_stdout, over))
    err_task = asyncio.ensure_future(_read_tail(proc.stderr, max_stderr))

    async def feed():
        try:
            proc.stdin.write(request)
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass                         # it exited without reading: its exit status says why
        finally:
            try:
                proc.stdin.close()
            except Exception:  # noqa: BLE001
                pass

    feed_task = asyncio.ensure_future(feed())
    wait_task = asyncio.ensure_future(proc.wait())
    over_task = asyncio.ensure_future(over.wait())
    timed_out = False
    try:
        done, _ = await asyncio.wait({wait_task, over_task}, timeout=timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if not done:
            timed_out = True
    except asyncio.CancelledError:
        _killpg(pgid)
        raise
    finally:
        over_task.cancel()
    # Whatever is left of the group (a child that outlived it, or all of it
    # on a timeout or an over-long stdout) is killed now.
    leftovers = _killpg(pgid)
    left_cg = kill_leftovers() if kill_leftovers is not None else 0
    try:
        status = await asyncio.wait_for(asyncio.shield(wait_task), 5.0)
    except asyncio.TimeoutError:
        status = None
    # The pipes close once every holder is dead; bounded wait regardless.
    try:
        (out, out_n), (err, err_n) = await asyncio.wait_for(asyncio.gather(out_task, err_task), 2.0)
    except asyncio.TimeoutError:
        out_task.cancel()
        err_task.cancel()
        out, out_n, err, err_n = b"", 0, b"", 0
    feed_task.cancel()
    duration = time.monotonic() - t0
    info = {"duration_ms": round(duration * 1000, 3), "stdout_bytes": out_n, "stderr_bytes": err_n,
            "pid": proc.pid}
    if status is not None:
        if status < 0:
            info["signal"] = -status
            try:
                info["signal_name"] = signal.Signals(-status).name
            except ValueError:
                pass
        else:
            info["exit_status"] = status
    tail = err.decode("utf-8", "replace")
    if tail:
        info["stderr_tail"] = tail
    if leftovers and not timed_out and not over.is_set() and status is not None:
        info["leftovers_killed"] = True
    if left_cg:
        info["cgroup_leftovers_killed"] = left_cg

    def fail(code, msg):
        o = Outcome.fail(code, msg, **info)
        return o

    if timed_out:
        return fail(E.OVERLAY_TIMEOUT, f"timed out after {timeout_s:g} s; its process group was killed")
    if over.is_set():
        return fail(E.OVERLAY_BAD_OUTPUT, f"stdout over {max_stdout} bytes; its process group was killed")
    if status is None or status != 0:
        if status is not None and status < 0:
            what = f"was killed by signal {info.get('signal_name', -status)}"
        else:
            what = f"exited with status {status}"
        return fail(E.OVERLAY_CRASHED, f"{argv[0]} {what}" + (f": {tail.strip()[-200:]}" if tail.strip() else ""))
    o = parse_output(out, "stdout")
    o.info.update(info)
    if not o.ok:
        o.error.setdefault("data", {}).update(info)
    return o


# ------------------------------------------------------------------ http

class _Unreachable(Exception):
    """Nothing was sent: connecting failed, so a retry cannot repeat a request."""


async def _connect(target: tuple, timeout: float):
    kind, addr = target
    try:
        if kind == "unix":
            return await asyncio.wait_for(asyncio.open_unix_connection(addr), timeout)
        return await asyncio.wait_for(asyncio.open_connection(addr[0], addr[1]), timeout)
    except (ConnectionRefusedError, FileNotFoundError, ConnectionResetError) as exc:
        raise _Unreachable(f"{exc.strerror or exc}") from None
    except OSError as exc:
        raise _Unreachable(f"{exc.strerror or exc}") from None


async def _read_response(reader, max_bytes: int) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > 65536:
        raise ValueError("response head over 64 KiB")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    status = int(parts[1])
    headers = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                break
            if len(body) + size > max_bytes:
                raise OverflowError(len(body) + size)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        return status, bytes(body)
    if "content-length" in headers:
        n = int(headers["content-length"])
        if n > max_bytes:
            raise OverflowError(n)
        return status, await reader.readexactly(n)
    body = await reader.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise OverflowError(len(body))
    return status, body


def http_target(manifest) -> tuple[tuple, str]:
    """((kind, address), host header) of an http entrypoint."""
    if manifest.unix_socket:
        return ("unix", manifest.unix_socket), "localhost"
    from urllib.parse import urlsplit
    u = urlsplit(manifest.base_url)
    return ("tcp", (u.hostname, u.port or 80)), u.netloc


def base_path(manifest) -> str:
    if manifest.unix_socket:
        return ""
    from urllib.parse import urlsplit
    return urlsplit(manifest.base_url).path.rstrip("/")


async def run_http(manifest, cap, request: bytes, *, timeout_s: float, max_bytes: int,
                   retries: int = 3, backoff_s: float = 0.05) -> Outcome:
    """POST the request; retry (with backoff, within the timeout) only when
    connecting failed, never once a byte of the request was sent."""
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    target, host = http_target(manifest)
    path = base_path(manifest) + (cap.path or "/" + cap.name)
    req = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(request)}\r\nConnection: close\r\nUser-Agent: aal-core\r\n\r\n").encode() + request
    attempt = 0
    while True:
        attempt += 1
        left = deadline - time.monotonic()
        if left <= 0:
            return Outcome.fail(E.OVERLAY_TIMEOUT, f"timed out after {timeout_s:g} s connecting",
                                attempts=attempt - 1)
        try:
            reader, writer = await _connect(target, left)
            break
        except asyncio.TimeoutError:
            return Outcome.fail(E.OVERLAY_TIMEOUT, f"timed out after {timeout_s:g} s connecting", attempts=attempt)
        except _Unreachable as exc:
            if attempt > retries:
                return Outcome.fail(E.OVERLAY_UNREACHABLE,
                                    f"cannot connect to {manifest.base_url} after {attempt} attempt(s): {exc}",
                                    attempts=attempt)
            await asyncio.sleep(min(backoff_s * 2 ** (attempt - 1), max(0.0, deadline - time.monotonic())))
    info = {"attempts": attempt}
    try:
        writer.write(req)
        status, body = await asyncio.wait_for(_go(writer, reader, max_bytes), max(0.001, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        return Outcome.fail(E.OVERLAY_TIMEOUT, f"no response within {timeout_s:g} s (not retried: the "
                                               f"service may have run it)", **info)
    except OverflowError as exc:
        return Outcome.fail(E.OVERLAY_BAD_OUTPUT, f"response body of {exc.args[0]} bytes is over the "
                                                  f"{max_bytes} byte limit", **info)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError, OSError) as exc:
        return Outcome.fail(E.OVERLAY_CRASHED, f"the connection failed mid-request (not retried): "
                                               f"{type(exc).__name__}: {exc}", **info)
    finally:
        writer.close()
    info["http_status"] = status
    info["duration_ms"] = round((time.monotonic() - t0) * 1000, 3)
    if not 200 <= status < 300:
        o = Outcome.fail(E.OVERLAY_CRASHED, f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}", **info)
        return o
    o = parse_output(body, "the response body")
    o.info.update(info)
    if not o.ok:
        o.error.setdefault("data", {}).update(info)
    return o


async def _go(writer, reader, max_bytes):
    await writer.drain()
    return await _read_response(reader, max_bytes)
