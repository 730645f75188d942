"""KeyUnit: the signing key's RPC.

    system.public_key   READ   {algorithm, public_key}: hex of the raw 32 bytes
    system.rotate_key   ADMIN  a new key replaces the old one (ledgered as
                               system.key_rotated with both public keys;
                               pushed on the system.key topic)

The key is loaded (or generated) at start, before any unit signs.  After a
rotation only the new key signs; what the old one signed still verifies
against the old public key, which the ledger entry keeps.
"""
from __future__ import annotations

import asyncio

from ..log import get_logger
from ..rpc.registry import Access
from ..units import Context, Unit
from .ed25519 import ALGORITHM, SigningKey

__all__ = ["KeyUnit"]

log = get_logger("keys")


class KeyUnit(Unit):
    name = "keys"

    def __init__(self, ctx: Context, *, ledger):
        super().__init__(ctx)
        self.ledger = ledger
        self.key: SigningKey | None = None
        self.rotations = 0
        self._on_rotate: list = []

    # -- the interface other units use ------------------------------------

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)

    @property
    def public_hex(self) -> str:
        return self.key.public_hex

    def on_rotate(self, callback) -> None:
        """callback(old_public_hex, new_public_hex) after each rotation."""
        self._on_rotate.append(callback)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.key = await loop.run_in_executor(None, SigningKey.load_or_create, self.ctx.state_dir)
        if self.key.created:
            log.info("signing_key_created", path=self.key.path, public_key=self.key.public_hex)
        if self.key.mode_fixed:
            log.warning("signing_key_mode_tightened", path=self.key.path, mode="0600")

    def status(self) -> dict:
        if self.key is None:
            return {}
        return {"signing": {"algorithm": ALGORITHM, "public_key": self.key.public_hex,
                            "path": self.key.path, "rotations": self.rotations}}

    # -- RPC ----------------------------------------------------------------

    def register(self, registry) -> None:
        registry.add("system.public_key", self.rpc_public_key, result="PublicKeyResult")
        registry.add("system.rotate_key", self.rpc_rotate_key, result="RotateKeyResult",
                     access=Access.ADMIN)
        registry.add_topic("system.key", data="KeyRotated", subscribe=lambda p, call: None,
                           notify_method="system.key_rotated",
                           summary="Push system.key_rotated {previous_public_key, public_key} "
                                   "after each system.rotate_key.")

    def rpc_public_key(self, p, call):
        """The public half of the daemon's signing key (Ed25519, raw 32 bytes as hex)."""
        return {"algorithm": ALGORITHM, "public_key": self.key.public_hex}

    async def rpc_rotate_key(self, p, call):
        """Generate a new signing key; the old one signs nothing more."""
        old = self.key
        new = await asyncio.get_running_loop().run_in_executor(None, old.rotated)
        self.key = new
        self.rotations += 1
        event = {"algorithm": ALGORITHM, "previous_public_key": old.public_hex,
                 "public_key": new.public_hex}
        index, _ = await self.ledger.append({"type": "system.key_rotated", **event})
        log.warning("signing_key_rotated", previous_public_key=old.public_hex, public_key=new.public_hex)
        for cb in self._on_rotate:
            cb(old.public_hex, new.public_hex)
        self.ctx.hub.publish("system.key", event)
        return {**event, "ledger_index": index}
