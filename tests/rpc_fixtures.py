"""A registry of test methods for the protocol tests (no sockets).

The params/result messages are real protobuf descriptors, added to the
default pool under the test-only package `aaltest.v1`, so `ParamSpec` and
`json_schema` run exactly as they do for the contracts in contracts/.
"""
from __future__ import annotations

import asyncio

from google.protobuf import descriptor_pb2, descriptor_pool

from aal_core.errors import (CONFLICT, ConfigError, LedgerError, ParseError, RpcError,
                             SourceError)
from aal_core.rpc import codec
from aal_core.rpc.registry import Access, Registry

_F = descriptor_pb2.FieldDescriptorProto


def _add_test_contracts() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindMessageTypeByName("aaltest.v1.EchoParams")
        return
    except KeyError:
        pass
    fd = descriptor_pb2.FileDescriptorProto(name="aaltest/v1/echo.proto", package="aaltest.v1",
                                            syntax="proto3")

    def msg(name, fields):
        m = fd.message_type.add(name=name)
        for i, (fname, ftype, label, optional) in enumerate(fields, start=1):
            f = m.field.add(name=fname, number=i, type=ftype, label=label, json_name=fname)
            if optional:
                # proto3 `optional`: a synthetic oneof per field.
                m.oneof_decl.add(name=f"_{fname}")
                f.oneof_index = len(m.oneof_decl) - 1
                f.proto3_optional = True
        return m

    opt, rep = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    msg("EchoParams", [("text", _F.TYPE_STRING, opt, False),
                       ("n", _F.TYPE_INT32, opt, True),
                       ("x", _F.TYPE_DOUBLE, opt, True),
                       ("tags", _F.TYPE_STRING, rep, False),
                       ("flag", _F.TYPE_BOOL, opt, True),
                       ("u", _F.TYPE_UINT64, opt, True)])
    msg("EchoResult", [("text", _F.TYPE_STRING, opt, False)])
    msg("NoParams", [])
    pool.Add(fd)


def make_registry() -> tuple[Registry, dict]:
    """The registry, and a dict the handlers record into (`calls`)."""
    _add_test_contracts()
    reg = Registry()
    seen: dict = {"calls": [], "gate": None}

    def echo(p, call):
        seen["calls"].append(("echo", p))
        return {"text": p["text"], **{k: v for k, v in p.items() if k != "text"}}

    async def aecho(p, call):
        await asyncio.sleep(0)
        seen["calls"].append(("aecho", p))
        return {"text": p["text"]}

    async def wait_gate(p, call):
        # Finishes only once `open_gate` ran: proves batch members run concurrently.
        if seen["gate"] is None:
            seen["gate"] = asyncio.Event()
        await asyncio.wait_for(seen["gate"].wait(), 2.0)
        return {"text": "passed"}

    async def open_gate(p, call):
        if seen["gate"] is None:
            seen["gate"] = asyncio.Event()
        seen["gate"].set()
        return {"text": "opened"}

    def crash(p, call):
        raise ZeroDivisionError("boom")

    async def acrash(p, call):
        raise KeyError("gone")

    def unencodable(p, call):
        return {"text": object()}

    def huge_int(p, call):
        return {"text": 1 << 70}

    def app_error(p, call):
        kind = p["text"]
        if kind == "rpc":
            raise RpcError(CONFLICT, "already there", {"what": "x"})
        if kind == "ledger":
            raise LedgerError("disk full", index=7)
        if kind == "source":
            raise SourceError("/proc/pressure/memory: no such file")
        if kind == "parse":
            raise ParseError("bad token", line=3, column=9, expected="number", found="x")
        if kind == "config":
            raise ConfigError("/etc/x.toml: unknown key rpc.nope")
        raise AssertionError(kind)

    def fragment(p, call):
        return codec.Fragment(b'{"text":"pre-encoded"}')

    async def sleep(p, call):
        seen["calls"].append(("sleep-start", p))
        await asyncio.sleep(p.get("x", 0.0))
        seen["calls"].append(("sleep-end", p))
        return {"text": p["text"]}

    def write_op(p, call):
        return {"text": "written"}

    def admin_op(p, call):
        return {"text": "administered"}

    E, N = "aaltest.v1.EchoParams", "aaltest.v1.NoParams"
    R = "aaltest.v1.EchoResult"
    reg.add("echo", echo, params=E, result=R, example={"text": "hi"})
    reg.add("aecho", aecho, params=E, result=R, example={"text": "hi"})
    reg.add("wait_gate", wait_gate, params=N, result=R)
    reg.add("open_gate", open_gate, params=N, result=R)
    reg.add("crash", crash, params=N, result=R)
    reg.add("acrash", acrash, params=N, result=R)
    reg.add("unencodable", unencodable, params=N, result=R)
    reg.add("huge_int", huge_int, params=N, result=R)
    reg.add("app_error", app_error, params=E, result=R, example={"text": "rpc"})
    reg.add("fragment", fragment, result=R)
    reg.add("sleep", sleep, params=E, result=R, example={"text": "z", "x": 0.01})
    reg.add("write_op", write_op, result=R, access=Access.WRITE)
    reg.add("admin_op", admin_op, result=R, access=Access.ADMIN)
    return reg, seen


# ------------------------------------------------------------ socket helpers

import contextlib  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402


class RawConn:
    """A bare AF_UNIX connection speaking newline-delimited JSON, to send
    whatever bytes a test wants and read replies line by line."""

    def __init__(self, path: str, timeout: float = 10.0, rcvbuf: int | None = None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_obj(self, obj) -> None:
        self.send(json.dumps(obj).encode() + b"\n")

    def line(self) -> bytes | None:
        """The next line, or None at EOF."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def reply(self):
        ln = self.line()
        assert ln is not None, "connection closed instead of a reply"
        return json.loads(ln)

    def call(self, method, params=None, id_=1):
        r = {"jsonrpc": "2.0", "id": id_, "method": method}
        if params is not None:
            r["params"] = params
        self.send_obj(r)
        while True:
            msg = self.reply()
            if "id" in msg:
                return msg

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True when the daemon closed its side within `timeout` (reading
        and keeping whatever arrives before)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.sock.settimeout(left)
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    return True
                self.buf += chunk
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def keeps_serving(path: str, interval: float = 0.02):
    """Asserts that the daemon answers system.health on a separate
    connection all through the block (no failure, and at least one answer
    after the block's work)."""
    stop = threading.Event()
    stats = {"ok": 0, "failures": []}

    def probe():
        while not stop.is_set():
            try:
                c = RawConn(path, timeout=10.0)
                try:
                    r = c.call("system.health")
                    if r.get("result", {}).get("ok") is True:
                        stats["ok"] += 1
                    else:
                        stats["failures"].append(r)
                finally:
                    c.close()
            except Exception as exc:  # noqa: BLE001 - recorded, asserted below
                stats["failures"].append(repr(exc))
            time.sleep(interval)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    try:
        yield stats
        before = stats["ok"]
        deadline = time.monotonic() + 10
        while stats["ok"] == before and time.monotonic() < deadline and not stats["failures"]:
            time.sleep(0.01)
    finally:
        stop.set()
        t.join(15)
    assert not stats["failures"], f"the daemon failed another client: {stats['failures'][:3]}"
    assert stats["ok"] > before, "the daemon stopped answering other clients"
