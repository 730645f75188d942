"""Per-process memory (RSS, and PSS where readable) through psutil: what one
process costs, not what the machine has left (that is the stress signal).
A library helper; the daemon does not call it (see README, sensing)."""
from __future__ import annotations

import psutil


def process_memory(pid: int) -> dict | None:
    """{"rss": bytes, "pss": bytes (if readable), "swap": bytes (if readable)}, or
    None when the process is gone.  PSS needs smaps_rollup access (same user or root)."""
    try:
        p = psutil.Process(pid)
        try:
            full = p.memory_full_info()
            out = {"rss": full.rss, "pss": full.pss}
            if hasattr(full, "swap"):
                out["swap"] = full.swap
            return out
        except psutil.AccessDenied:
            return {"rss": p.memory_info().rss}
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
