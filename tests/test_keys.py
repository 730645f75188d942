"""The daemon's Ed25519 signing key: created 0600 at first start, kept
across restarts, never logged, published by system.public_key, replaced by
system.rotate_key (ledgered, pushed).  Real key files, a real daemon."""
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization

from aal_core.client import Client
from aal_core.keys import KeyError_, SigningKey, verify
from helpers import start_daemon, cleanup


def public_of_file(path):
    key = serialization.load_pem_private_key(open(path, "rb").read(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def test_created_0600_whatever_the_umask_and_loaded_again(tmp_path):
    old = os.umask(0)
    try:
        k = SigningKey.load_or_create(str(tmp_path))
    finally:
        os.umask(old)
    assert k.created and stat.S_IMODE(os.stat(k.path).st_mode) == 0o600
    assert not os.path.exists(k.path + ".tmp")
    again = SigningKey.load_or_create(str(tmp_path))
    assert not again.created and again.public_hex == k.public_hex == public_of_file(k.path)
    assert len(k.public_bytes) == 32


def test_sign_verify_and_what_fails(tmp_path):
    k = SigningKey.load_or_create(str(tmp_path))
    sig = k.sign(b"head")
    assert len(sig) == 64
    assert verify(k.public_hex, sig.hex(), b"head") and verify(k.public_bytes, sig, b"head")
    assert not verify(k.public_hex, sig, b"head!")
    bad = bytearray(sig)
    bad[0] ^= 1
    assert not verify(k.public_hex, bytes(bad), b"head")
    assert not verify("zz", sig, b"head") and not verify(k.public_hex, "00", b"head")


def test_never_shows_the_private_half(tmp_path):
    k = SigningKey.load_or_create(str(tmp_path))
    pem = open(k.path, "rb").read()
    body = b"".join(pem.splitlines()[1:-1]).decode()
    assert body not in repr(k) and k.public_hex in repr(k)


def test_loose_mode_tightened(tmp_path):
    k = SigningKey.load_or_create(str(tmp_path))
    os.chmod(k.path, 0o644)
    again = SigningKey.load_or_create(str(tmp_path))
    assert again.mode_fixed and stat.S_IMODE(os.stat(k.path).st_mode) == 0o600
    assert again.public_hex == k.public_hex


def test_bad_files_are_named(tmp_path):
    path = tmp_path / "signing.key"
    path.write_bytes(b"not a key")
    with pytest.raises(KeyError_, match="signing.key is not an unencrypted PKCS#8 PEM key"):
        SigningKey.load_or_create(str(tmp_path))
    path.unlink()
    (tmp_path / "elsewhere").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere", path)
    with pytest.raises(KeyError_, match="cannot open signing key"):
        SigningKey.load_or_create(str(tmp_path))


def test_rotation_replaces_the_file(tmp_path):
    k = SigningKey.load_or_create(str(tmp_path))
    n = k.rotated()
    assert n.public_hex != k.public_hex and public_of_file(k.path) == n.public_hex
    assert stat.S_IMODE(os.stat(k.path).st_mode) == 0o600


def test_daemon_publishes_rotates_and_keeps_its_key():
    d = start_daemon()
    try:
        st = d.call("system.status")
        state = st["state_dir"]
        path = os.path.join(state, "signing.key")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        pub = d.call("system.public_key")
        assert pub == {"algorithm": "ed25519", "public_key": public_of_file(path)}
        assert st["signing"]["public_key"] == pub["public_key"]
        with Client(d.socket, timeout=10) as watcher:
            it = watcher.subscribe("system.key")
            rot = d.call("system.rotate_key")
            note = next(it)
        assert note["data"]["previous_public_key"] == pub["public_key"]
        assert rot["public_key"] == note["data"]["public_key"] == public_of_file(path) != pub["public_key"]
        i = rot["ledger_index"]
        entry = d.call("ledger.get", {"start": i, "end": i + 1})["entries"][0]
        assert entry["data"]["type"] == "system.key_rotated"
        assert entry["data"]["public_key"] == rot["public_key"]
        assert d.call("system.status")["signing"]["rotations"] == 1
        base = d.base
        d.stop()
        pem = open(path, "rb").read()
        body = b"".join(pem.splitlines()[1:-1]).decode()
        assert body not in d.log()
        d2 = start_daemon(base=base)
        try:
            assert d2.call("system.public_key")["public_key"] == rot["public_key"]
        finally:
            d2.stop()
    finally:
        cleanup(d)

