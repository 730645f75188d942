"""What a client checks before it applies an AdaptationCommand, in order.

Pure (the clock is passed in) and free of daemon imports, so the PyTorch
client (aal_core.client.train) and the tests use the same code:

    1. signature   Ed25519 over `signed_bytes(cmd)` against the daemon's key
                   (RETIRED_KEY when it verifies against a key rotated away)
    2. malformed   no command_id or no payload
    3. run         training_run_id is this run's
    4. nonce       command_id not seen within the store's TTL (then recorded)
    5. freshness   issued_at at most future_skew_s ahead, at most freshness_s old
    6. deadline    issued_at + execution_deadline_ms not passed

This is Esper-Lite's order (signature, then nonce, then freshness): a
forged command never reaches the nonce store, so it cannot burn a real
command's id, and a replay is named a replay even once it is also stale.
Each refusal is a `Rejected` carrying its RejectReason (the proto enum).
"""
from __future__ import annotations

import collections

from ..keys.ed25519 import verify
from ..v1 import train_pb2

__all__ = ["FRESHNESS_S", "FUTURE_SKEW_S", "CommandVerifier", "NonceStore", "Rejected",
           "signed_bytes", "sign_command"]

FRESHNESS_S = 60.0
FUTURE_SKEW_S = 5.0
R = train_pb2.RejectReason


def signed_bytes(cmd: train_pb2.AdaptationCommand) -> bytes:
    """The bytes a signature covers: the command with `signature` cleared,
    serialised with SerializeToString(deterministic=True)."""
    c = train_pb2.AdaptationCommand()
    c.CopyFrom(cmd)
    c.signature = ""
    return c.SerializeToString(deterministic=True)


def sign_command(cmd: train_pb2.AdaptationCommand, sign) -> None:
    """Set cmd.signature to hex(sign(signed_bytes(cmd))); sign returns 64 raw bytes."""
    cmd.signature = sign(signed_bytes(cmd)).hex()


class Rejected(Exception):
    def __init__(self, reason: int, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def reason_name(self) -> str:
        return R.Name(self.reason)


class NonceStore:
    """command_ids seen, each kept for ttl_s (insertion order = expiry order),
    at most max_entries (the oldest forgotten first)."""

    def __init__(self, ttl_s: float, max_entries: int = 4096):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()

    def _expire(self, now: float) -> None:
        while self._seen:
            k, t = next(iter(self._seen.items()))
            if now - t < self.ttl_s and len(self._seen) < self.max_entries:
                break
            self._seen.popitem(last=False)

    def add(self, nonce: str, now: float) -> bool:
        """Record nonce; False when it was already there (a replay)."""
        self._expire(now)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True

    def __len__(self) -> int:
        return len(self._seen)


class CommandVerifier:
    """The checks for one run, with its nonce store and trusted key."""

    def __init__(self, run_id: str, public_key: str, *, freshness_s: float = FRESHNESS_S,
                 future_skew_s: float = FUTURE_SKEW_S, max_nonces: int = 4096):
        self.run_id = run_id
        self.public_key = public_key
        self.retired: list[str] = []
        self.freshness_s = freshness_s
        self.future_skew_s = future_skew_s
        # Past freshness + skew a replay is refused as stale anyway.
        self.nonces = NonceStore(freshness_s + future_skew_s + 1.0, max_nonces)

    def rotate(self, new_public_key: str) -> None:
        """Trust only new_public_key from now on."""
        if new_public_key != self.public_key:
            self.retired.append(self.public_key)
            self.public_key = new_public_key

    def check(self, cmd: train_pb2.AdaptationCommand, now: float) -> None:
        """Raise Rejected unless cmd may be applied; records its nonce."""
        data = signed_bytes(cmd)
        if not cmd.signature or not verify(self.public_key, cmd.signature, data):
            if cmd.signature and any(verify(k, cmd.signature, data) for k in self.retired):
                raise Rejected(R.RETIRED_KEY, "signed by a key the daemon rotated away from")
            raise Rejected(R.BAD_SIGNATURE, "signature does not verify against the daemon's public key")
        if not cmd.command_id or cmd.WhichOneof("payload") is None:
            raise Rejected(R.MALFORMED, "no command_id or no payload")
        if cmd.training_run_id != self.run_id:
            raise Rejected(R.WRONG_RUN, f"command for run {cmd.training_run_id!r}, this is {self.run_id!r}")
        if not self.nonces.add(cmd.command_id, now):
            raise Rejected(R.REPLAYED, f"command_id {cmd.command_id} was seen before")
        if cmd.issued_at > now + self.future_skew_s:
            raise Rejected(R.FUTURE, f"issued {cmd.issued_at - now:.1f} s in the future "
                                     f"(more than {self.future_skew_s:g} s)")
        if now - cmd.issued_at > self.freshness_s:
            raise Rejected(R.STALE, f"issued {now - cmd.issued_at:.1f} s ago "
                                    f"(older than {self.freshness_s:g} s)")
        self.check_deadline(cmd, now)

    @staticmethod
    def check_deadline(cmd: train_pb2.AdaptationCommand, now: float) -> None:
        """Raise Rejected(DEADLINE_PASSED) once issued_at + execution_deadline_ms passed
        (checked again at the safe point where the command is applied)."""
        if cmd.execution_deadline_ms and now > cmd.issued_at + cmd.execution_deadline_ms / 1000.0:
            raise Rejected(R.DEADLINE_PASSED, f"deadline {cmd.execution_deadline_ms} ms after issue "
                                              f"passed {now - cmd.issued_at - cmd.execution_deadline_ms / 1000.0:.2f} s ago")
