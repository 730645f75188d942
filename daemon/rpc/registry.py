"""The method registry: what dispatches a call is also what documents it.

Each method names its params and result messages from contracts/ (package
aal_core.v1), and its access level.  `openrpc()` builds the rpc.discover
document from the same entries.
"""
from __future__ import annotations

import enum
import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from google.protobuf import descriptor_pool

from ..errors import RpcError, CONFLICT
from .schema import ParamSpec, json_schema

PROTO_PACKAGE = "aal_core.v1"


class Access(enum.IntEnum):
    """Who may call a method.  A peer's level is computed from SO_PEERCRED."""

    READ = 0   # any peer that could connect
    WRITE = 1  # members of the socket group (rpc.group), root, the daemon's user
    ADMIN = 2  # root or the daemon's own user only


# The methods whose handling appends ledger entries for the caller, in one
# place: the dispatcher checks the rate and byte budgets (budget.py) for
# these and charges the bytes they append.  A method added to a unit that
# appends must be named here (tests/test_budget_daemon.py calls every
# method's example and fails if one outside this set grows the chain).
LEDGER_WRITERS = frozenset({
    "job.submit",       # govern.submit
    "job.release",      # govern.release
    "ledger.append",    # the caller's entry
    "overlay.invoke",   # overlay.provenance (the call's provenance record hash)
    "system.rotate_key",  # system.key_rotated
    "train.field_report",  # train.field_report
    "train.register",   # train.register and the governor's govern.submit
    "train.report",     # train.command for the commands issued in answer
    "train.telemetry",  # train.telemetry for a packet's events or change of health
    "venom.set_model",  # venom.model
    "venom.release",    # venom.release and the lifted quarantine's govern.directive
})

_loaded = False


def _load_contracts():
    """Import every generated module so its messages are in the default pool."""
    global _loaded
    if _loaded:
        return
    from .. import v1
    for mod in pkgutil.iter_modules(v1.__path__):
        if mod.name.endswith("_pb2"):
            importlib.import_module(f"{v1.__name__}.{mod.name}")
    _loaded = True


def message(name: str):
    """Descriptor of a message of the contracts package, by short or full name."""
    _load_contracts()
    full = name if "." in name else f"{PROTO_PACKAGE}.{name}"
    try:
        return descriptor_pool.Default().FindMessageTypeByName(full)
    except KeyError:
        raise KeyError(f"no message {full} in contracts/ (is the .proto compiled?)") from None


@dataclass(frozen=True)
class Method:
    name: str
    handler: Callable[..., Any]
    params: ParamSpec
    result: Any            # message descriptor
    access: Access
    summary: str
    # For notifications pushed by a topic: the message of the pushed data.
    pushes: Any = None
    # Params that make a valid call (named form), for rpc.discover and the
    # contracts test, which calls every method; None when it takes none.
    example: Any = None
    # An application error code the example is documented to get (e.g. a
    # NOT_FOUND for a call naming an object that does not exist yet).
    example_error: int | None = None
    # Its handling appends ledger entries (LEDGER_WRITERS): rate and byte budgets apply.
    writes_ledger: bool = False


@dataclass
class Topic:
    """A push stream: `<name>.subscribe` / `<name>.unsubscribe` and notifications."""

    name: str
    notify_method: str
    data: Any              # descriptor of the pushed payload
    summary: str = ""


class Registry:
    def __init__(self):
        self._methods: dict[str, Method] = {}
        self.topics: dict[str, Topic] = {}

    def add(self, name: str, handler: Callable, *, result: str, params: str | None = None,
            access: Access = Access.READ, summary: str = "", example: dict | None = None,
            example_error: int | None = None) -> Method:
        """Register `handler(params: dict, call: Call)`; may return an awaitable.

        `example`: named params of a valid call (checked here, so a typo
        fails at start-up).  Give one when `params` has required fields:
        tests/test_contracts.py calls every method and fails without it."""
        if name in self._methods:
            raise ValueError(f"method {name} registered twice")
        spec = ParamSpec(message(params) if params else None)
        if example is not None:
            try:
                spec.bind(example)
            except RpcError as exc:
                raise ValueError(f"example params of {name} are invalid: {exc.message}") from None
        m = Method(name=name, handler=handler, params=spec,
                   result=message(result), access=access,
                   summary=summary or (inspect.getdoc(handler) or "").split("\n")[0],
                   example=example, example_error=example_error,
                   writes_ledger=name in LEDGER_WRITERS)
        self._methods[name] = m
        return m

    def add_topic(self, name: str, *, data: str, subscribe: Callable, notify_method: str | None = None,
                  params: str | None = None, summary: str = "", example: dict | None = None,
                  access: Access = Access.READ) -> Topic:
        """Register `<name>.subscribe` (handled by `subscribe(params, call)`, which
        returns a filter or None) and `<name>.unsubscribe`."""
        topic = Topic(name=name, notify_method=notify_method or f"{name}.update",
                      data=message(data), summary=summary)
        self.topics[name] = topic

        def _subscribe(p, call):
            accept = subscribe(p, call)
            if inspect.isawaitable(accept):
                raise TypeError("subscribe filters must be synchronous")
            sub = call.subscribe(topic, accept)
            return {"subscription": sub, "topic": name}

        def _unsubscribe(p, call):
            if not call.unsubscribe(p["subscription"]):
                raise RpcError(CONFLICT, f"no subscription {p['subscription']!r} on this connection",
                               {"subscription": p["subscription"]})
            return {"unsubscribed": True}

        self.add(f"{name}.subscribe", _subscribe, params=params, result="SubscribeResult",
                 summary=summary or f"Push {topic.notify_method} notifications to this connection.",
                 example=example, access=access)
        self.add(f"{name}.unsubscribe", _unsubscribe, params="UnsubscribeParams",
                 result="UnsubscribeResult", summary=f"Stop a {name} subscription.",
                 example={"subscription": "s0"}, example_error=CONFLICT)
        return topic

    def get(self, name: str) -> Method | None:
        return self._methods.get(name)

    def table(self) -> dict[str, Method]:
        """Name -> Method, the live dict (the compiled dispatch reads it)."""
        return self._methods

    def names(self) -> list[str]:
        return sorted(self._methods)

    def __iter__(self):
        return iter(self._methods.values())

    def openrpc(self, version: str) -> dict:
        schemas: dict = {}
        methods = []
        for m in sorted(self._methods.values(), key=lambda m: m.name):
            methods.append({
                "name": m.name,
                "summary": m.summary,
                "paramStructure": "either",
                "params": m.params.content_descriptors(schemas),
                "result": {"name": m.result.name,
                           "schema": {"$ref": "#/components/schemas/" + json_schema(m.result, schemas)}},
                "x-access": m.access.name.lower(),
            })
            if m.writes_ledger:
                methods[-1]["x-writes-ledger"] = True
            if m.example is not None:
                methods[-1]["x-example-params"] = m.example
            if m.example_error is not None:
                methods[-1]["x-example-error"] = m.example_error
        for t in sorted(self.topics.values(), key=lambda t: t.name):
            json_schema(t.data, schemas)
        notifications = [{"name": t.notify_method, "topic": t.name,
                          "params": {"subscription": {"type": "string"},
                                     "dropped": {"type": "integer", "minimum": 0},
                                     "data": {"$ref": "#/components/schemas/" + t.data.full_name}}}
                         for t in sorted(self.topics.values(), key=lambda t: t.name)]
        return {
            "openrpc": "1.2.6",
            "info": {"title": "aal-core", "version": version,
                     "x-notifications": notifications},
            "methods": methods,
            "components": {"schemas": schemas},
        }
