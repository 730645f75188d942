"""The signing key's Ed25519 through libcrypto (ext/ossl_ed25519.pyx) and the
`cryptography` package agree on everything Ed25519 fixes: the public key of
a seed, the PKCS#8 PEM bytes, every signature (Ed25519 is deterministic) and
every verdict; the daemon does not import cryptography for its key."""
from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.exceptions import InvalidSignature
from hypothesis import given, settings, strategies as st

from aal_core import ossl_ed25519 as ed

seeds = st.binary(min_size=32, max_size=32)


def theirs(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed)


@settings(max_examples=200, deadline=None)
@given(seeds, st.binary(max_size=2048))
def test_same_public_key_pem_and_signature(seed, msg):
    ours, ref = ed.PrivateKey.from_seed(seed), theirs(seed)
    assert ours.public_bytes() == ref.public_key().public_bytes(serialization.Encoding.Raw,
                                                               serialization.PublicFormat.Raw)
    assert ours.pem() == ref.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
    sig = ours.sign(msg)
    assert sig == ref.sign(msg) and len(sig) == 64
    assert ed.verify(ours.public_bytes(), sig, msg)
    assert ed.PrivateKey.from_pem(ours.pem()).sign(msg) == sig


@settings(max_examples=200, deadline=None)
@given(seeds, st.binary(max_size=256), st.integers(0, 63), st.integers(0, 7), st.binary(max_size=8))
def test_same_verdict_on_tampered_input(seed, msg, byte, bit, extra):
    k = theirs(seed)
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    sig = bytearray(k.sign(msg))
    sig[byte] ^= 1 << bit
    for s, m in ((bytes(sig), msg), (k.sign(msg), msg + extra)):
        try:
            Ed25519PublicKey.from_public_bytes(pub).verify(s, m)
            want = True
        except InvalidSignature:
            want = False
        assert ed.verify(pub, s, m) is want


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        ed.PrivateKey.from_seed(b"short")
    with pytest.raises(ValueError, match="PKCS#8"):
        ed.PrivateKey.from_pem(b"not a key")
    with pytest.raises(ValueError):
        ed.PrivateKey.from_pem(b"")
    enc = theirs(b"\x01" * 32).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.BestAvailableEncryption(b"pw"))
    with pytest.raises(ValueError):           # encrypted: refused, never prompted for
        ed.PrivateKey.from_pem(enc)
    from cryptography.hazmat.primitives.asymmetric import ec
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(TypeError, match="Ed25519"):
        ed.PrivateKey.from_pem(other)
    k = ed.PrivateKey.generate()
    with pytest.raises(ValueError):
        ed.verify(b"\x00" * 31, k.sign(b"x"), b"x")
    with pytest.raises(ValueError):
        ed.verify(k.public_bytes(), b"\x00" * 63, b"x")
    assert not ed.verify(k.public_bytes(), b"\x00" * 64, b"x")
    assert k.public_bytes().hex() in repr(k)
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(k)
    assert ed.PrivateKey.generate().public_bytes() != k.public_bytes()


def test_the_key_module_imports_no_cryptography():
    code = "import sys, aal_core.keys.unit; print('cryptography' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
