"""One Ed25519 key in one file: created 0600 at first start, never logged.

The file is PKCS#8 PEM (unencrypted), so `openssl pkey -in FILE -pubout`
reads it.  Verification needs the raw 32-byte public key only: a client
holds that, never the private key.  The key lives in OpenSSL's libcrypto
(aal_core.ossl_ed25519, compiled): the daemon does not load the
`cryptography` package (~7 MiB of RSS) for it.
"""
from __future__ import annotations

import os
import stat

from ..errors import AalError
from ..ledger.store import create_atomic
from ..ossl_ed25519 import PrivateKey, verify as _verify

ALGORITHM = "ed25519"
KEY_FILE = "signing.key"


class KeyError_(AalError):
    """The key file cannot be created, read or replaced (names path and cause)."""


def _write_private(path: str, key: PrivateKey) -> None:
    """key to path: a fresh 0600 temporary file, fsync, rename, directory fsync."""
    create_atomic(path, key.pem(), "cannot write signing key", mode=0o600, error=KeyError_)


class SigningKey:
    """The private key and its raw public bytes."""

    def __init__(self, path: str, private: PrivateKey, created: bool = False):
        self.path = path
        self._private = private
        self.public_bytes = private.public_bytes()
        self.created = created      # True when this start generated it
        self.mode_fixed = False     # True when a looser mode was tightened to 0600

    @property
    def public_hex(self) -> str:
        return self.public_bytes.hex()

    def __repr__(self) -> str:      # never the private half, not even in a traceback
        return f"SigningKey(path={self.path!r}, public={self.public_hex})"

    @classmethod
    def load_or_create(cls, state_dir: str) -> "SigningKey":
        """The key in state_dir/signing.key, generated there if absent."""
        path = os.path.join(state_dir, KEY_FILE)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            key = PrivateKey.generate()
            _write_private(path, key)
            return cls(path, key, created=True)
        except OSError as exc:
            raise KeyError_(f"cannot open signing key {path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise KeyError_(f"signing key {path} is not a regular file")
            loose = st.st_mode & 0o077
            if loose:
                os.fchmod(fd, 0o600)
            with os.fdopen(os.dup(fd), "rb") as fh:
                pem = fh.read(1 << 16)
        except OSError as exc:
            raise KeyError_(f"cannot read signing key {path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        try:
            key = PrivateKey.from_pem(pem)
        except ValueError:
            raise KeyError_(f"signing key {path} is not an unencrypted PKCS#8 PEM key; move it away "
                            f"to have a new one generated (commands and heads signed by it then no "
                            f"longer verify against the new public key)") from None
        except TypeError:
            raise KeyError_(f"signing key {path} is not an Ed25519 key") from None
        out = cls(path, key)
        out.mode_fixed = bool(loose)
        return out

    def sign(self, data: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature of data."""
        return self._private.sign(data)

    def rotated(self) -> "SigningKey":
        """A new key written over this one's file (atomic): the old one is gone."""
        key = PrivateKey.generate()
        _write_private(self.path, key)
        return SigningKey(self.path, key, created=True)


def verify(public_key: bytes | str, signature: bytes | str, data: bytes) -> bool:
    """True when signature (raw 64 bytes or hex) is public_key's (raw 32 or hex) over data."""
    try:
        pub = bytes.fromhex(public_key) if isinstance(public_key, str) else public_key
        sig = bytes.fromhex(signature) if isinstance(signature, str) else signature
        return _verify(pub, sig, data)
    except (ValueError, TypeError):
        return False
