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
    reg.add("write_op", write_op, result=R, access=Access.WRITE)
    reg.add("admin_op", admin_op, result=R, access=Access.ADMIN)
    return reg, seen
