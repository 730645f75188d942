"""Memory governance: jobs declare a memory contract in rune text, register,
and are told over their connection how to degrade as stress rises and when
they may recover (README, "governance").

    policy.py    which DEGRADE steps are in force (seed / progressive)
    level.py     the machine-wide degradation level, driven by the PID
    governor.py  jobs, admission, directives and acknowledgements (pure)
    cgroups.py   per-job memory cgroups (v1 / v2)
    unit.py      GovernorUnit: RPC, sensing listener, heartbeats, ledger
"""
from .governor import Governor
from .unit import GovernorUnit

__all__ = ["Governor", "GovernorUnit"]
