"""The pure JSON-RPC layer, bytes in and bytes out, no sockets (h11 style)."""
from __future__ import annotations

import asyncio
import json

import pytest

from aal_core import errors as E
from aal_core.rpc import Access, Call, Dispatcher, Limits, LineFramer
from aal_core.rpc.protocol import FrameTooLarge, INT_MAX, INT_MIN

from rpc_fixtures import make_registry


@pytest.fixture
def reg():
    return make_registry()


@pytest.fixture
def disp(reg):
    return Dispatcher(reg[0], Limits(max_frame_bytes=4096, max_depth=8, max_batch=5))


def run(disp, frame, call=None):
    """handle_frame, awaiting if the reply is async; returns the decoded reply or None."""
    out = disp.handle_frame(frame if isinstance(frame, bytes) else json.dumps(frame).encode(),
                            call or Call())
    if out is not None and not isinstance(out, bytes):
        out = asyncio.run(_await(out))
    if out is None:
        return None
    assert out.endswith(b"\n") and out.count(b"\n") == 1, out
    return json.loads(out)


async def _await(aw):
    return await aw


def req(method, params=None, id_=1, **extra):
    r = {"jsonrpc": "2.0", "method": method, **extra}
    if id_ is not None:
        r["id"] = id_
    if params is not None:
        r["params"] = params
    return r


def err(reply):
    assert "result" not in reply, reply
    return reply["error"]


# ---------------------------------------------------------------- framing

def test_framer_joins_split_reads():
    f = LineFramer(100)
    assert f.feed(b'{"a"') == []
    assert f.pending == 4
    assert f.feed(b':1}') == []
    assert f.feed(b'\n') == [b'{"a":1}']
    assert f.pending == 0


def test_framer_splits_many_frames_in_one_read_and_keeps_the_tail():
    f = LineFramer(100)
    assert f.feed(b'1\n2\n3\n{"x') == [b"1", b"2", b"3"]
    assert f.feed(b'"}\n') == [b'{"x"}']


def test_framer_ignores_blank_lines_and_accepts_crlf():
    f = LineFramer(100)
    assert f.feed(b"\n\n  \n\r\n") == []
    assert f.feed(b"[1]\r\n\n") == [b"[1]\r"]
    assert f.feed(b"\n") == []
    assert f.feed(b"") == []


def test_framer_limit_is_inclusive_on_both_paths():
    f = LineFramer(4)
    assert f.feed(b"1234\n") == [b"1234"]            # fast path
    assert f.feed(b"x\n1234\n") == [b"x", b"1234"]    # slow path
    ev = LineFramer(4).feed(b"12345\n")
    assert len(ev) == 1 and isinstance(ev[0], FrameTooLarge) and ev[0].size == 5 and ev[0].limit == 4


def test_framer_oversize_without_newline_is_reported_as_soon_as_it_passes_the_limit():
    f = LineFramer(10)
    assert f.feed(b"0123456789") == []
    ev = f.feed(b"a")
    assert isinstance(ev[-1], FrameTooLarge) and ev[-1].size == 11
    assert f.pending == 0  # nothing buffered without bound


def test_framer_frames_before_an_oversize_one_are_kept():
    ev = LineFramer(5).feed(b"ab\ncd\n" + b"x" * 9 + b"\n")
    assert ev[:2] == [b"ab", b"cd"] and isinstance(ev[2], FrameTooLarge)


# ---------------------------------------------------------------- params

def test_named_and_positional_params(disp):
    assert run(disp, req("echo", {"text": "a", "n": 3}))["result"] == {"text": "a", "n": 3}
    assert run(disp, req("echo", ["a", 3, 1.5, ["t"], True]))["result"] == \
        {"text": "a", "n": 3, "x": 1.5, "tags": ["t"], "flag": True}


def test_null_optional_params_are_left_out(disp):
    assert run(disp, req("echo", {"text": "a", "n": None}))["result"] == {"text": "a"}


@pytest.mark.parametrize("params,param,expected,got", [
    ({"text": 5}, "text", "string", "integer"),
    ({"text": "a", "n": "3"}, "n", "integer", "string"),
    ({"text": "a", "n": 1.5}, "n", "integer", "number"),
    ({"text": "a", "n": True}, "n", "integer", "boolean"),
    ({"text": "a", "x": "1"}, "x", "number", "string"),
    ({"text": "a", "flag": 1}, "flag", "boolean", "integer"),
    ({"text": "a", "tags": "t"}, "tags", "array", "string"),
    ({"text": "a", "tags": ["t", 2]}, "tags[1]", "string", "integer"),
    ({"text": None}, "text", "string", "null"),
])
def test_wrong_param_types_name_the_param(disp, params, param, expected, got):
    e = err(run(disp, req("echo", params, id_="q")))
    assert e["code"] == E.INVALID_PARAMS
    assert e["data"]["param"] == param and e["data"]["expected"] == expected and e["data"]["got"] == got
    assert param in e["message"]


def test_param_errors_missing_unknown_too_many_negative(disp):
    e = err(run(disp, req("echo", {})))
    assert e["code"] == E.INVALID_PARAMS and e["data"]["missing"] == ["text"]
    e = err(run(disp, req("echo", {"text": "a", "bogus": 1})))
    assert e["code"] == E.INVALID_PARAMS and e["data"]["param"] == "bogus" and "text" in e["data"]["expected"]
    e = err(run(disp, req("echo", ["a", 1, 1.0, [], True, 1, "extra"])))
    assert e["code"] == E.INVALID_PARAMS and "too many positional" in e["message"]
    e = err(run(disp, req("echo", {"text": "a", "u": -1})))
    assert e["code"] == E.INVALID_PARAMS and e["data"]["param"] == "u"


def test_method_without_params_message_refuses_params(disp):
    e = err(run(disp, req("fragment", {"x": 1})))
    assert e["code"] == E.INVALID_PARAMS


# ---------------------------------------------------------------- notifications

def test_notifications_get_no_reply_but_run(disp, reg):
    assert run(disp, req("echo", {"text": "n"}, id_=None)) is None
    assert reg[1]["calls"] == [("echo", {"text": "n"})]


def test_notifications_get_no_reply_even_on_error(disp):
    assert run(disp, req("nope", id_=None)) is None
    assert run(disp, req("echo", {"text": 1}, id_=None)) is None
    assert run(disp, req("crash", id_=None)) is None
    assert run(disp, req("admin_op", id_=None), Call(access=Access.READ)) is None


def test_async_notification_runs_and_gets_no_reply(disp, reg):
    assert run(disp, req("aecho", {"text": "bg"}, id_=None)) is None
    assert reg[1]["calls"] == [("aecho", {"text": "bg"})]


# ---------------------------------------------------------------- batches

def test_empty_batch_is_one_invalid_request(disp):
    r = run(disp, b"[]")
    assert r["id"] is None and err(r)["code"] == E.INVALID_REQUEST and "empty batch" in r["error"]["message"]
    assert r["error"]["data"] == {"size": 0}


def test_all_notification_batch_gets_no_reply(disp, reg):
    assert run(disp, [req("echo", {"text": "a"}, id_=None), req("aecho", {"text": "b"}, id_=None)]) is None
    assert [c[0] for c in reg[1]["calls"]] == ["echo", "aecho"]


def test_mixed_batch_replies_in_order_without_notifications(disp):
    r = run(disp, [req("echo", {"text": "a"}, id_=1), req("echo", {"text": "n"}, id_=None),
                   req("aecho", {"text": "b"}, id_=2), 7, req("nope", id_=3)])
    assert [x["id"] for x in r] == [1, 2, None, 3]
    assert r[0]["result"] == {"text": "a"} and r[1]["result"] == {"text": "b"}
    assert r[2]["error"]["code"] == E.INVALID_REQUEST and r[2]["error"]["data"]["got"] == "number"
    assert r[3]["error"]["code"] == E.METHOD_NOT_FOUND


def test_batch_over_the_limit_is_refused_whole(disp, reg):
    r = run(disp, [req("echo", {"text": str(i)}, id_=i) for i in range(6)])
    e = err(r)
    assert e["code"] == E.INVALID_REQUEST and e["data"] == {"max_batch": 5, "size": 6}
    assert reg[1]["calls"] == []


def test_async_batch_members_run_concurrently(disp):
    # wait_gate finishes only after open_gate ran; sequential awaiting would time out.
    r = run(disp, [req("wait_gate", id_=1), req("open_gate", id_=2)])
    assert [x.get("result") for x in r] == [{"text": "passed"}, {"text": "opened"}]


# ---------------------------------------------------------------- standard errors

def test_parse_error_says_where(disp):
    r = run(disp, b'{"jsonrpc":"2.0","id":1,"method":')
    e = err(r)
    assert r["id"] is None and e["code"] == E.PARSE_ERROR
    assert e["data"]["position"] == 33 and e["data"]["line"] == 1 and "end of data" in e["data"]["reason"]


def test_invalid_utf8_is_a_parse_error_with_the_byte_offset(disp):
    e = err(run(disp, b'{"jsonrpc":"2.0","method":"echo\xff\xfe"}'))
    assert e["code"] == E.PARSE_ERROR and e["data"] == {"reason": "invalid UTF-8", "position": 31}


def test_lone_surrogate_escape_is_a_parse_error(disp):
    e = err(run(disp, b'{"jsonrpc":"2.0","id":1,"method":"\\ud800"}'))
    assert e["code"] == E.PARSE_ERROR and "surrogate" in e["data"]["reason"]


@pytest.mark.parametrize("msg,fragment", [
    (b'"just a string"', "JSON object"),
    (b'{"jsonrpc":"1.0","id":1,"method":"echo"}', '"jsonrpc"'),
    (b'{"id":1,"method":"echo"}', '"jsonrpc"'),
    (b'{"jsonrpc":"2.0","id":1,"method":5}', '"method"'),
    (b'{"jsonrpc":"2.0","id":1}', '"method"'),
    (b'{"jsonrpc":"2.0","id":1,"method":"echo","params":"a"}', '"params"'),
    (b'{"jsonrpc":"2.0","id":1,"method":"echo","extra":1}', "unknown request member"),
    (b'{"jsonrpc":"2.0","id":true,"method":"echo"}', "id must be"),
    (b'{"jsonrpc":"2.0","id":{"a":1},"method":"echo"}', "id must be"),
])
def test_invalid_requests(disp, msg, fragment):
    e = err(run(disp, msg))
    assert e["code"] == E.INVALID_REQUEST and fragment in e["message"]


@pytest.mark.parametrize("msg,got", [
    (b'{"jsonrpc":"1.0","id":1,"method":"echo"}', "1.0"),
    (b'{"id":1,"method":"echo"}', "missing"),
    (b'{"jsonrpc":2.0,"id":1,"method":"echo"}', "number"),
])
def test_wrong_jsonrpc_member_says_what_was_sent(disp, msg, got):
    e = err(run(disp, msg))
    assert e["code"] == E.INVALID_REQUEST and e["data"] == {"expected": "2.0", "got": got}


def test_invalid_request_keeps_a_valid_id(disp):
    r = run(disp, b'{"jsonrpc":"2.0","id":"k","method":"echo","params":3}')
    assert r["id"] == "k" and r["error"]["data"] == {"got": "number"}


def test_method_not_found_names_it(disp):
    e = err(run(disp, req("no.such")))
    assert e["code"] == E.METHOD_NOT_FOUND and e["data"] == {"method": "no.such"}


def test_handler_crash_is_internal_error_without_a_traceback(disp):
    e = err(run(disp, req("crash")))
    assert e["code"] == E.INTERNAL_ERROR and e["message"] == "internal error"
    assert e["data"] == {"method": "crash", "exception": "ZeroDivisionError"}
    e = err(run(disp, req("acrash")))
    assert e["code"] == E.INTERNAL_ERROR and e["data"]["exception"] == "KeyError"


def test_unencodable_results_become_internal_errors_keeping_the_id(disp):
    r = run(disp, req("unencodable", id_=9))
    assert r["id"] == 9 and r["error"]["code"] == E.INTERNAL_ERROR and "encoded" in r["error"]["message"]
    r = run(disp, req("huge_int", id_=10))
    assert r["id"] == 10 and "64-bit" in r["error"]["data"]["reason"]
    # In a batch, only the bad member is replaced.
    r = run(disp, [req("huge_int", id_=1), req("echo", {"text": "ok"}, id_=2)])
    assert r[0]["error"]["code"] == E.INTERNAL_ERROR and r[1]["result"] == {"text": "ok"}


# ---------------------------------------------------------------- application errors

@pytest.mark.parametrize("kind,code,data", [
    ("rpc", E.CONFLICT, {"what": "x"}),
    ("ledger", E.LEDGER_ERROR, {"index": 7}),
    ("source", E.SOURCE_ABSENT, None),
    ("parse", E.INVALID_PARAMS, {"line": 3, "column": 9, "expected": "number", "found": "x"}),
    ("config", E.CONFIG_INVALID, None),
])
def test_application_errors_map_to_documented_codes(disp, kind, code, data):
    e = err(run(disp, req("app_error", {"text": kind})))
    assert e["code"] == code and e.get("data") == data and e["message"]
    assert code in E.APP_CODES or -32700 <= code <= -32600


def test_access_levels(disp):
    for level, allowed in [(Access.READ, set()), (Access.WRITE, {"write_op"}),
                           (Access.ADMIN, {"write_op", "admin_op"})]:
        call = Call(pid=1, uid=1234, gid=1234, access=level)
        for m in ("write_op", "admin_op"):
            r = run(disp, req(m), call)
            if m in allowed:
                assert "result" in r
            else:
                e = err(r)
                assert e["code"] == E.PERMISSION_DENIED
                assert e["data"]["required"] == {"write_op": "write", "admin_op": "admin"}[m]
                assert e["data"]["granted"] == level.name.lower() and e["data"]["peer_uid"] == 1234
                assert "uid 1234" in e["message"]


# ---------------------------------------------------------------- ids and numbers

@pytest.mark.parametrize("id_", ["abc", "", 0, -5, 2**63 - 1, 2**64 - 1, INT_MIN, 1.5, None])
def test_ids_come_back_exactly(disp, id_):
    r = run(disp, json.dumps(req("echo", {"text": "a"}, id_=0) | {"id": id_}).encode())
    assert r["id"] == id_ and type(r["id"]) is type(id_)


def test_id_beyond_64_bits_is_refused_not_rounded(disp, reg):
    r = run(disp, b'{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"echo","params":{"text":"a"}}')
    e = err(r)
    assert r["id"] is None and e["code"] == E.INVALID_REQUEST and "64-bit" in e["message"]
    assert e["data"]["id"] == "123456789012345678901234567890"
    assert e["data"]["min"] == INT_MIN and e["data"]["max"] == INT_MAX
    assert reg[1]["calls"] == []


def test_param_integer_beyond_64_bits_is_invalid_params(disp, reg):
    r = run(disp, b'{"jsonrpc":"2.0","id":4,"method":"echo","params":{"text":"a","n":-9223372036854775809}}')
    assert r["id"] == 4 and err(r)["code"] == E.INVALID_PARAMS
    assert r["error"]["data"]["integer"] == "-9223372036854775809"
    assert reg[1]["calls"] == []


def test_param_integer_beyond_64_bits_in_a_batch_member(disp, reg):
    r = run(disp, b'[{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"a"}},'
                  b'{"jsonrpc":"2.0","id":2,"method":"echo","params":{"text":"b","n":18446744073709551616}}]')
    assert r[0]["id"] == 1 and "result" in r[0]
    assert r[1]["id"] == 2 and err(r[1])["code"] == E.INVALID_PARAMS
    assert r[1]["error"]["data"]["integer"] == "18446744073709551616"
    assert len(reg[1]["calls"]) == 1


def test_long_digit_runs_inside_strings_are_fine(disp):
    r = run(disp, req("echo", {"text": "1" * 100}))
    assert r["result"] == {"text": "1" * 100}


def test_uint64_max_is_accepted_exactly(disp):
    r = run(disp, b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"a","u":18446744073709551615}}')
    assert r["result"]["u"] == 2**64 - 1


@pytest.mark.parametrize("num", [b"1e400", b"-1e400", b"1E309"])
def test_infinite_numbers_are_parse_errors(disp, num):
    e = err(run(disp, b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"a","x":' + num + b"}}"))
    assert e["code"] == E.PARSE_ERROR and "infinity" in e["data"]["reason"]


# ---------------------------------------------------------------- limits

def test_nesting_over_the_limit(disp, reg):
    deep = {"text": "a", "tags": []}
    cur = deep["tags"]
    for _ in range(10):
        cur.append([])
        cur = cur[0]
    e = err(run(disp, req("echo", deep)))
    assert e["code"] == E.INVALID_REQUEST and e["data"] == {"max_depth": 8}
    assert reg[1]["calls"] == []


def test_nesting_beyond_the_json_parser_limit_gets_the_same_error(disp):
    frame = b"[" * 3000 + b"]" * 3000
    disp.limits = Limits(max_frame_bytes=10000, max_depth=8, max_batch=5)
    e = err(run(disp, frame))
    assert e["code"] == E.INVALID_REQUEST and e["data"] == {"max_depth": 8}


def test_deepest_allowed_nesting_with_a_long_integer_still_gets_a_reply(disp, reg):
    # A 19+ digit run makes the dispatcher re-read the frame with the stdlib
    # parser (one recursion per level): at the largest rpc.max_depth the
    # config allows, that must still be a reply, never a RecursionError.
    from aal_core.config import RANGES
    top = RANGES[("rpc", "max_depth")][1]
    disp.limits = Limits(max_frame_bytes=1 << 16, max_depth=top, max_batch=5)
    n = top - 3
    tags = b"[" * n + b"12345678901234567890" + b"]" * n
    r = run(disp, b'{"jsonrpc":"2.0","id":9,"method":"echo","params":{"text":"a","tags":' + tags + b"}}")
    assert r["id"] == 9 and err(r)["code"] == E.INVALID_PARAMS and r["error"]["data"]["param"] == "tags[0]"
    big = b'{"jsonrpc":"2.0","id":9,"method":"echo","params":{"text":"a","x":' + b"[" * n + b"1" * 25 + b"]" * n + b"}}"
    e = err(run(disp, big))
    assert e["code"] == E.INVALID_PARAMS and e["data"]["integer"] == "1" * 25
    assert reg[1]["calls"] == []


def test_brackets_in_strings_do_not_count_as_nesting(disp):
    r = run(disp, req("echo", {"text": "[[[[[[[[[[[[{{{{{{{{{{"}))
    assert r["result"]["text"].startswith("[[[")


def test_frame_over_the_limit(disp):
    e = err(run(disp, b'"' + b"a" * 5000 + b'"'))
    assert e["code"] == E.FRAME_TOO_LARGE and e["data"] == {"limit": 4096, "size": 5002}


def test_fragment_results_are_embedded_verbatim(disp):
    r = run(disp, req("fragment", id_=3))
    assert r == {"jsonrpc": "2.0", "id": 3, "result": {"text": "pre-encoded"}}
