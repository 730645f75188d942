"""Hypothesis fuzz of the protocol layer: whatever a peer sends, the
dispatcher never raises and answers with valid JSON-RPC 2.0 or nothing."""
from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, given, settings, strategies as st

from aal_core.rpc import Access, Call, Dispatcher, Limits, LineFramer
from aal_core.rpc.protocol import FrameTooLarge

from rpc_fixtures import make_registry

REG, _ = make_registry()
DISP = Dispatcher(REG, Limits(max_frame_bytes=2048, max_depth=6, max_batch=4))
METHODS = REG.names() + ["nope", "", "system.health"]

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_value = st.recursive(json_scalar, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=6), kids, max_size=4)), max_leaves=12)
params = st.one_of(json_value,
                   st.fixed_dictionaries({"text": json_value}, optional={
                       "n": json_value, "x": json_value, "tags": json_value, "flag": json_value,
                       "u": json_value}),
                   st.lists(json_value, max_size=7))
request = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "2.0", "2.0", "1.0", 2])},
    optional={"id": st.one_of(st.none(), st.integers(), st.text(max_size=5), st.floats(allow_nan=False,
                                                                                    allow_infinity=False),
                              st.booleans(), st.lists(st.integers(), max_size=1)),
              "method": st.one_of(st.sampled_from(METHODS), json_scalar),
              "params": params,
              "extra": json_scalar})
frame_obj = st.one_of(request, st.lists(request, max_size=6), json_value)


def _check_reply_obj(r):
    assert isinstance(r, dict), r
    assert r["jsonrpc"] == "2.0"
    assert "id" in r
    assert ("result" in r) != ("error" in r), r
    if "error" in r:
        e = r["error"]
        assert type(e["code"]) is int and isinstance(e["message"], str) and e["message"]
        assert set(e) <= {"code", "message", "data"}
    assert set(r) <= {"jsonrpc", "id", "result", "error"}


def _reply(frame: bytes, access: Access):
    out = DISP.handle_frame(frame, Call(pid=1, uid=1000, gid=1000, access=access))
    if out is not None and not isinstance(out, bytes):
        out = asyncio.run(_drive(out))
    return out


async def _drive(aw):
    return await asyncio.wait_for(aw, 5)


def _check(frame: bytes, out):
    if out is None:
        return
    assert isinstance(out, bytes) and out.endswith(b"\n") and out.count(b"\n") == 1
    reply = json.loads(out)
    if isinstance(reply, list):
        assert reply, "an empty batch reply must not be sent"
        for r in reply:
            _check_reply_obj(r)
    else:
        _check_reply_obj(reply)


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes(frame):
    _check(frame, _reply(frame, Access.READ))


@SETTINGS
@given(frame_obj, st.sampled_from(list(Access)))
def test_arbitrary_requests(obj, access):
    frame = json.dumps(obj).encode()
    out = _reply(frame, access)
    _check(frame, out)
    # A request with an id always gets exactly one reply carrying that id
    # (when the request is well formed enough for the id to be trusted).
    if (isinstance(obj, dict) and obj.get("jsonrpc") == "2.0" and isinstance(obj.get("method"), str)
            and "extra" not in obj and type(obj.get("id")) in (int, str) and
            (type(obj.get("id")) is str or -(2**63) <= obj["id"] < 2**64)
            and ("params" not in obj or isinstance(obj["params"], (list, dict)))):
        assert out is not None
        assert json.loads(out)["id"] == obj["id"]


@SETTINGS
@given(frame_obj, st.binary(max_size=8), st.integers(min_value=0, max_value=60))
def test_mangled_requests(obj, junk, at):
    frame = json.dumps(obj).encode()
    frame = frame[:at] + junk + frame[at:]
    _check(frame, _reply(frame, Access.ADMIN))


@SETTINGS
@given(st.lists(st.binary(max_size=40), max_size=8), st.lists(st.integers(min_value=1, max_value=50), max_size=10))
def test_framer_chunking_does_not_change_the_frames(lines, cuts):
    """Any split of the stream into reads gives the same frames as one read."""
    lines = [ln.replace(b"\n", b"") for ln in lines]
    stream = b"".join(ln + b"\n" for ln in lines)
    whole = LineFramer(64).feed(stream)
    f, got, pos = LineFramer(64), [], 0
    for c in cuts:
        got += f.feed(stream[pos:pos + c])
        pos += c
    got += f.feed(stream[pos:])
    assert not any(isinstance(x, FrameTooLarge) for x in got + whole)
    assert got == [ln for ln in lines if ln.strip()]
