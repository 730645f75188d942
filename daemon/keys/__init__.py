"""The daemon's one Ed25519 signing key.

    ed25519.py   pure: the key file (PKCS#8 PEM, 0600), sign, verify
    unit.py      KeyUnit: system.public_key, system.rotate_key, the system.key topic

Other units take the KeyUnit by name (build_units) and sign with
`keys.sign(data)`; `keys.on_rotate(callback)` tells them of a new key.
"""
from .ed25519 import ALGORITHM, KeyError_, SigningKey, verify

__all__ = ["ALGORITHM", "KeyError_", "SigningKey", "verify"]
