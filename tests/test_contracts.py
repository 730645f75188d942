"""Every method of a running daemon, called and checked against its contract.

Generic on purpose: it walks rpc.discover, so methods added later by any
unit are covered without editing this file.  A method with required params
must register an `example=` (see Registry.add) or this test fails.  Each
result must parse strictly (unknown fields fail) as its declared protobuf
message AND validate against the JSON Schema rpc.discover publishes for it.
"""
from __future__ import annotations

import json
import time

import jsonschema
import pytest
from google.protobuf import json_format, message_factory

from aal_core import errors as E
from aal_core.rpc.registry import message

from rpc_fixtures import RawConn

pytestmark = pytest.mark.slow


def _cls(name: str):
    return message_factory.GetMessageClass(message(name))


def _strict_parse(obj, msg_name: str):
    json_format.ParseDict(obj, _cls(msg_name)(), ignore_unknown_fields=False)


@pytest.fixture(scope="module")
def live():
    from helpers import cleanup, start_daemon
    # tegrastats replayed from the bundled recording, so its methods answer too.
    d = start_daemon(config="[rpc]\nheartbeat_interval_s = 0.05\n", tegrastats="replay")
    c = RawConn(d.socket, timeout=30)
    doc = c.call("rpc.discover")["result"]
    yield d, c, doc
    c.close()
    cleanup(d)


def _validator(doc, ref: dict):
    schema = dict(ref)
    schema["components"] = doc["components"]
    return jsonschema.Draft202012Validator(schema)


def test_discover_is_a_well_formed_openrpc_document(live):
    _, _, doc = live
    jsonschema.Draft202012Validator.check_schema({"components": doc["components"]})
    assert doc["openrpc"] == "1.2.6"
    assert doc["info"]["title"] == "aal-core" and isinstance(doc["info"]["version"], str)
    names = [m["name"] for m in doc["methods"]]
    assert len(names) == len(set(names)) and names == sorted(names)
    assert {"system.health", "system.status", "system.reload", "rpc.discover",
            "system.heartbeat.subscribe", "system.heartbeat.unsubscribe"} <= set(names)
    schemas = doc["components"]["schemas"]
    for key, sch in schemas.items():
        jsonschema.Draft202012Validator.check_schema(sch)
        assert sch["type"] == "object" and sch["additionalProperties"] is False, key
    refs = []

    def walk(o):
        if isinstance(o, dict):
            if "$ref" in o:
                refs.append(o["$ref"])
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(doc)
    for r in refs:
        assert r.startswith("#/components/schemas/") and r.split("/")[-1] in schemas, r
    for m in doc["methods"]:
        assert set(m) >= {"name", "summary", "params", "result", "x-access"}, m["name"]
        assert m["x-access"] in ("read", "write", "admin")
        assert m["summary"], f"{m['name']} has no summary (give the handler a docstring)"
        assert isinstance(m["params"], list)
        for p in m["params"]:
            assert set(p) == {"name", "required", "schema"} and isinstance(p["required"], bool)
        assert set(m["result"]) == {"name", "schema"}
        # The result message exists in contracts/ (raises otherwise).
        message(m["result"]["name"])
        if "x-example-params" in m:
            ex = m["x-example-params"]
            assert isinstance(ex, dict) and set(ex) <= {p["name"] for p in m["params"]}
    for n in doc["info"]["x-notifications"]:
        assert n["params"]["data"]["$ref"].split("/")[-1] in schemas


def test_every_method_answers_with_its_declared_contract(live):
    d, c, doc = live
    problems = []
    subs: dict[str, str] = {}
    order = sorted(doc["methods"], key=lambda m: (m["name"].endswith(".unsubscribe"), m["name"]))
    for i, m in enumerate(order):
        name = m["name"]
        required = [p["name"] for p in m["params"] if p["required"]]
        params = m.get("x-example-params")
        if name.endswith(".unsubscribe") and name[:-12] in subs:
            params = {"subscription": subs[name[:-12]]}
        elif required and params is None:
            problems.append(f"{name}: required params {required} but no example= in Registry.add")
            continue
        reply = c.call(name, params, id_=i)
        assert reply["id"] == i
        if "error" in reply:
            e = reply["error"]
            if m.get("x-example-error") == e["code"] and name not in (n + ".unsubscribe" for n in subs):
                continue
            problems.append(f"{name}({json.dumps(params)}) -> error {e}")
            continue
        result = reply["result"]
        try:
            _strict_parse(result, m["result"]["name"])
        except json_format.ParseError as exc:
            problems.append(f"{name}: result does not parse as {m['result']['name']}: {exc}")
            continue
        errors = sorted(_validator(doc, m["result"]["schema"]).iter_errors(result), key=str)
        if errors:
            problems.append(f"{name}: result does not match its published schema: {errors[0].message}")
        if name.endswith(".subscribe"):
            subs[name[:-10]] = result["subscription"]
    assert not problems, "\n".join(problems)


def test_pushed_notifications_match_their_contract(live):
    d, _, doc = live
    topics = {n["name"]: n for n in doc["info"]["x-notifications"]}
    c = RawConn(d.socket, timeout=30)
    try:
        r = c.call("system.heartbeat.subscribe")
        sub = r["result"]["subscription"]
        seen = 0
        deadline = time.monotonic() + 10
        while seen < 3 and time.monotonic() < deadline:
            n = c.reply()
            assert set(n) == {"jsonrpc", "method", "params"} and n["method"] in topics
            p = n["params"]
            assert set(p) == {"subscription", "dropped", "data"} and type(p["dropped"]) is int
            if p["subscription"] != sub:
                continue
            schema_ref = topics[n["method"]]["params"]["data"]
            _strict_parse(p["data"], schema_ref["$ref"].split("/")[-1])
            assert not list(_validator(doc, schema_ref).iter_errors(p["data"]))
            seen += 1
        assert seen == 3
        assert c.call("system.heartbeat.unsubscribe", {"subscription": sub})["result"] == {"unsubscribed": True}
        e = c.call("system.heartbeat.unsubscribe", {"subscription": sub})["error"]
        assert e["code"] == E.CONFLICT and e["data"] == {"subscription": sub}
    finally:
        c.close()


def test_results_are_proto3_json_with_snake_case_names(live):
    _, c, _ = live
    st = c.call("system.status")["result"]
    msg = _cls("SystemStatus")()
    json_format.ParseDict(st, msg)
    again = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    # Round trip through protobuf keeps every field name as sent.
    assert set(again) <= set(st)
    assert "uptime_s" in st and "uptimeS" not in st
