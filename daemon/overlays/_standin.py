"""TEMPORARY stand-in for sandbox.py (engineer i10sandbox's), same interface;
deleted once theirs is merged.  It confines nothing: CLEAR is refused
unless overlays.allow_unconfined_clear."""
from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from dataclasses import dataclass


class SandboxUnavailable(Exception):
    pass


@dataclass(frozen=True)
class Mechanisms:
    def to_dict(self) -> dict:
        return {"mechanism": "none"}


def probe() -> Mechanisms:
    return Mechanisms()


@dataclass(frozen=True)
class Confinement:
    phase: str
    cap_class: str
    network: bool
    scratch_dir: str
    mechanism: str = "none"

    def to_dict(self) -> dict:
        return {"mechanism": self.mechanism, "phase": self.phase}

    def cleanup(self) -> None:
        shutil.rmtree(self.scratch_dir, ignore_errors=True)


def plan(phase, cap_class, network=False, mechanisms=None, config=None) -> Confinement:
    if phase == "CLEAR" and not getattr(config, "allow_unconfined_clear", False):
        raise SandboxUnavailable("no kernel mechanism to confine CLEAR (stand-in)")
    return Confinement(phase, cap_class, network, tempfile.mkdtemp(prefix="aal-ovl-"))


async def spawn(argv, conf, env=None, cwd=None, cgroup_procs=None):
    def pre():
        if cgroup_procs:
            with open(cgroup_procs, "w") as fh:
                fh.write(str(os.getpid()))
    return await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd, start_new_session=True,
        preexec_fn=pre if cgroup_procs else None)
