"""The `aal-core export` arguments, kept apart from main.py so that `aal-core
run` (the daemon) never imports prometheus_client or redis."""
from __future__ import annotations

from .. import config as config_mod


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="serve Prometheus metrics and publish to Redis (unprivileged)")
    p.add_argument("--config", metavar="FILE",
                   help=f"the daemon's TOML config (default {config_mod.DEFAULT_CONFIG_FILE} if it exists)")
    p.add_argument("--socket", metavar="PATH", help="the daemon's socket (default daemon.socket)")
    p.add_argument("--listen", metavar="HOST:PORT", help="override metrics.listen ('off' to disable)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def cmd_export(args) -> int:
    from .main import cmd_export as run
    return run(args)
