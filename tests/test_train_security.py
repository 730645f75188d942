"""Signed, fresh, applied once: a real daemon signs, a real client checks,
an attacker on the socket injects.  Each forged, replayed, stale, future,
wrong-run, late and retired-key command is refused with its reason, reported
to the daemon (counted, ledgered) and never reaches the training loop."""
import json
import os
import time

import pytest

from aal_core.client.train import CommandChannel
from aal_core.keys import SigningKey
from aal_core.train.checks import sign_command
from aal_core.v1 import train_pb2
from google.protobuf import json_format
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from helpers import cleanup, start_daemon, wait_for
from train_helpers import EAGER, InjectingProxy, ledger_data

STATE = {"training_run_id": "run-a", "knobs": {"micro_batch_size": 64, "grad_accum_steps": 1}}


def _frame(cmd) -> bytes:
    d = json_format.MessageToDict(cmd, preserving_proto_field_name=True)
    return json.dumps({"jsonrpc": "2.0", "method": "train.command", "params": {"command": d}}).encode()


def _signed(key_sign, **kw):
    c = train_pb2.AdaptationCommand(version=1, command_type=train_pb2.AdaptationCommand.BATCH_ADJUSTMENT,
                                    training_run_id="run-a", issued_at=time.time(), issued_by="attacker",
                                    execution_deadline_ms=30000)
    c.command_id = os.urandom(16).hex()
    c.batch_adjustment.micro_batch = 1
    c.batch_adjustment.grad_accum_steps = 64
    for k, v in kw.items():
        setattr(c, k, v)
    sign_command(c, key_sign)
    return c


@pytest.fixture
def rig():
    d = start_daemon(config=EAGER)
    proxy = InjectingProxy(d.socket, os.path.join(d.base, "proxy.sock"))
    ch = CommandChannel("run-a", socket_path=proxy.path)
    try:
        assert ch.wait_connected(10), ch.errors
        yield d, proxy, ch
    finally:
        ch.close(flush_s=0)
        proxy.close()
        cleanup(d)


def _rejections(d) -> dict:
    return d.call("train.status", {"run_id": "run-a"})["runs"][0]["rejections"]


def test_every_bad_command_is_refused_with_its_reason_and_counted(rig):
    d, proxy, ch = rig
    key = SigningKey.load_or_create(os.path.join(d.base, "state"))     # the daemon's own key (we are root)
    ch.send_state(STATE)
    # The genuine command passes the checks and reaches the loop.
    real = wait_for(ch.commands, what="the daemon's command")
    assert len(real) == 1 and real[0].WhichOneof("payload") == "batch_adjustment"
    assert (real[0].batch_adjustment.micro_batch, real[0].batch_adjustment.grad_accum_steps) == (32, 2)
    real_line = next(l for l in proxy.from_daemon if b'"train.command"' in l)

    tampered = train_pb2.AdaptationCommand()
    tampered.CopyFrom(real[0])
    tampered.batch_adjustment.micro_batch = 1
    tampered.command_id = os.urandom(16).hex()
    now = time.time()
    attacks = {
        "replayed": (real_line, "REPLAYED"),
        "tampered": (_frame(tampered), "BAD_SIGNATURE"),
        "foreign key": (_frame(_signed(Ed25519PrivateKey.generate().sign)), "BAD_SIGNATURE"),
        "stale": (_frame(_signed(key.sign, issued_at=now - 120, execution_deadline_ms=300000)), "STALE"),
        "future": (_frame(_signed(key.sign, issued_at=now + 30)), "FUTURE"),
        "wrong run": (_frame(_signed(key.sign, training_run_id="run-b")), "WRONG_RUN"),
        "late": (_frame(_signed(key.sign, issued_at=now - 10, execution_deadline_ms=1000)), "DEADLINE_PASSED"),
        "not an object": (b'{"jsonrpc":"2.0","method":"train.command","params":{"command":"x"}}', "MALFORMED"),
        "unknown field": (b'{"jsonrpc":"2.0","method":"train.command","params":{"command":{"bogus":1}}}',
                          "MALFORMED"),
    }
    for line, _ in attacks.values():
        proxy.inject(line)
    want = {"REPLAYED": 1, "BAD_SIGNATURE": 2, "STALE": 1, "FUTURE": 1, "WRONG_RUN": 1, "DEADLINE_PASSED": 1,
            "MALFORMED": 2}
    wait_for(lambda: _rejections(d) == want, what="every rejection counted by the daemon")
    assert dict(ch.rejected) == want
    assert ch.commands() == []                                   # nothing reached the loop
    st = d.call("train.status")
    assert st["rejections"] == want
    # The run's one real command is still pending: no rejection was taken for its answer.
    run = st["runs"][0]
    assert [r["command"]["command_id"] for r in run["pending"]] == [real[0].command_id]
    # Each rejection is in the ledger with its reason.
    reports = wait_for(lambda: [r for r in ledger_data(d, "train.field_report")
                                if r["report"]["outcome"] == "REJECTED"] if len(ledger_data(d, "train.field_report")) >= 9 else None,
                       what="9 ledgered field reports")
    got = {}
    for r in reports:
        got[r["report"]["reject_reason"]] = got.get(r["report"]["reject_reason"], 0) + 1
    assert got == want
    known = {r["report"].get("command_id", ""): r["known"] for r in reports}
    assert known[real[0].command_id] is True            # the replay names a command the daemon issued
    assert sum(known.values()) == 1


def test_after_key_rotation_commands_signed_by_the_old_key_are_refused(rig):
    d, proxy, ch = rig
    old = SigningKey.load_or_create(os.path.join(d.base, "state"))
    assert ch.verifier.public_key == old.public_hex
    rot = d.call("system.rotate_key")
    assert rot["previous_public_key"] == old.public_hex
    wait_for(lambda: ch.verifier.public_key == rot["public_key"], what="the rotation announced to the run")
    assert any(b'"train.key_rotated"' in l for l in proxy.from_daemon)
    proxy.inject(_frame(_signed(old.sign)))
    wait_for(lambda: _rejections(d) == {"RETIRED_KEY": 1}, what="the old-key command refused")
    assert ch.commands() == []
    # The new key's commands pass: the daemon's answer to a report after the rotation.
    ch.send_state(STATE)
    cmds = wait_for(ch.commands, what="a command signed by the new key")
    new = SigningKey.load_or_create(os.path.join(d.base, "state"))
    assert new.public_hex == rot["public_key"] and cmds[0].issued_by == "aal-core/" + new.public_hex[:16]
