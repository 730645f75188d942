"""The client's command checks (aal_core.train.checks), on real Ed25519 keys."""
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization

from aal_core.train.checks import CommandVerifier, NonceStore, Rejected, sign_command, signed_bytes
from aal_core.v1 import train_pb2

R = train_pb2.RejectReason
NOW = 1_800_000_000.0


def _key():
    k = Ed25519PrivateKey.generate()
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    return k, pub


def _cmd(key, run="run-a", cid="c" * 32, issued=NOW, deadline_ms=30000, sign=True):
    c = train_pb2.AdaptationCommand(version=1, command_id=cid, training_run_id=run, issued_at=issued,
                                    command_type=train_pb2.AdaptationCommand.BATCH_ADJUSTMENT,
                                    execution_deadline_ms=deadline_ms, issued_by="test")
    c.batch_adjustment.micro_batch = 8
    c.batch_adjustment.grad_accum_steps = 2
    c.annotations["reason"] = "test"
    if sign:
        sign_command(c, key.sign)
    return c


def _reason(v, cmd, now=NOW):
    with pytest.raises(Rejected) as ei:
        v.check(cmd, now)
    return R.Name(ei.value.reason)


def test_a_signed_fresh_command_for_this_run_passes_once():
    k, pub = _key()
    v = CommandVerifier("run-a", pub)
    c = _cmd(k)
    v.check(c, NOW + 1)
    assert _reason(v, c, NOW + 2) == "REPLAYED"


def test_signature_covers_the_deterministic_bytes_without_the_signature():
    k, pub = _key()
    c = _cmd(k)
    raw = bytes.fromhex(c.signature)
    assert len(raw) == 64
    k.public_key().verify(raw, signed_bytes(c))       # raises if not
    bare = train_pb2.AdaptationCommand()
    bare.CopyFrom(c)
    bare.signature = ""
    assert signed_bytes(c) == bare.SerializeToString(deterministic=True)


@pytest.mark.parametrize("tamper", ["payload", "run", "issued_at", "annotation", "garbage", "empty"])
def test_a_forged_or_altered_command_is_refused_as_bad_signature(tamper):
    k, pub = _key()
    v = CommandVerifier("run-a", pub)
    c = _cmd(k)
    if tamper == "payload":
        c.batch_adjustment.micro_batch = 1
    elif tamper == "run":
        c.training_run_id = "run-b"
    elif tamper == "issued_at":
        c.issued_at += 1
    elif tamper == "annotation":
        c.annotations["reason"] = "other"
    elif tamper == "garbage":
        c.signature = "zz" * 64
    else:
        c.signature = ""
    assert _reason(v, c) == "BAD_SIGNATURE"


def test_a_command_signed_by_another_key_is_bad_signature():
    k, pub = _key()
    other, _ = _key()
    v = CommandVerifier("run-a", pub)
    assert _reason(v, _cmd(other)) == "BAD_SIGNATURE"


def test_a_forged_command_does_not_burn_the_real_ones_nonce():
    k, pub = _key()
    v = CommandVerifier("run-a", pub)
    forged = _cmd(_key()[0], cid="d" * 32)
    assert _reason(v, forged) == "BAD_SIGNATURE"
    v.check(_cmd(k, cid="d" * 32), NOW)                 # the genuine one still passes


def test_wrong_run_stale_future_deadline_each_with_their_reason():
    k, pub = _key()
    v = CommandVerifier("run-a", pub, freshness_s=60, future_skew_s=5)
    assert _reason(v, _cmd(k, run="run-b", cid="1" * 32)) == "WRONG_RUN"
    assert _reason(v, _cmd(k, cid="2" * 32, issued=NOW - 61)) == "STALE"
    assert _reason(v, _cmd(k, cid="3" * 32, issued=NOW + 5.5)) == "FUTURE"
    v.check(_cmd(k, cid="4" * 32, issued=NOW + 4.5), NOW)            # within the skew
    v.check(_cmd(k, cid="5" * 32, issued=NOW - 59, deadline_ms=120000), NOW)   # within the window
    assert _reason(v, _cmd(k, cid="6" * 32, issued=NOW - 2, deadline_ms=1000)) == "DEADLINE_PASSED"


def test_replay_is_named_a_replay_even_when_it_is_also_stale():
    k, pub = _key()
    v = CommandVerifier("run-a", pub, freshness_s=60)
    c = _cmd(k)
    v.check(c, NOW)
    assert _reason(v, c, NOW + 61) == "REPLAYED"     # nonce before freshness (Esper's order)
    assert _reason(v, c, NOW + 200) == "STALE"       # past the store's TTL the window still refuses it


def test_after_rotation_the_old_keys_commands_are_refused_as_retired():
    old, old_pub = _key()
    new, new_pub = _key()
    v = CommandVerifier("run-a", old_pub)
    v.check(_cmd(old, cid="1" * 32), NOW)
    v.rotate(new_pub)
    assert _reason(v, _cmd(old, cid="2" * 32)) == "RETIRED_KEY"
    v.check(_cmd(new, cid="3" * 32), NOW)


def test_a_command_without_payload_or_id_is_malformed():
    k, pub = _key()
    v = CommandVerifier("run-a", pub)
    c = train_pb2.AdaptationCommand(version=1, command_id="7" * 32, training_run_id="run-a", issued_at=NOW)
    sign_command(c, k.sign)
    assert _reason(v, c) == "MALFORMED"
    c = _cmd(k, cid="", sign=False)
    sign_command(c, k.sign)
    assert _reason(v, c) == "MALFORMED"


def test_nonce_store_forgets_after_its_ttl_and_past_its_size():
    s = NonceStore(ttl_s=10, max_entries=3)
    assert s.add("a", 0) and not s.add("a", 9)
    assert s.add("a", 10.5)                 # expired, accepted again
    for i, n in enumerate("bcd"):
        s.add(n, 11 + i)
    assert len(s) <= 3
