"""`aal-core`: the daemon's command line.

    aal-core run [--config FILE] [--socket PATH] [--state-dir DIR] [--log-level L] [--local [DIR]] ...
    aal-core export [--config FILE] [--socket PATH]     (metrics and fleet; daemon/export)

Exit codes (see README): 0 clean stop, 2 usage or configuration error,
3 cannot listen (socket in use, path not writable), 4 state unusable
(e.g. ledger corruption), 1 anything else.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from . import config as config_mod
from . import log as log_mod
from .errors import AalError, ConfigError

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_LISTEN, EXIT_STATE = 0, 1, 2, 3, 4

LOCAL_DIR = ".aal-core-local"


def _run_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="run the daemon in the foreground")
    p.add_argument("--config", metavar="FILE",
                   help=f"TOML config (default {config_mod.DEFAULT_CONFIG_FILE} if it exists)")
    p.add_argument("--socket", metavar="PATH", help="Unix socket to listen on")
    p.add_argument("--state-dir", metavar="DIR", help="where durable state (the ledger) lives")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--local", nargs="?", const=LOCAL_DIR, metavar="DIR",
                   help=f"no-root defaults: socket and state under DIR (default ./{LOCAL_DIR})")
    p.add_argument("--proc-root", metavar="DIR", help="read /proc files from DIR (sense.proc_root)")
    p.add_argument("--tegrastats", metavar="CMD",
                   help="tegrastats command, 'off', 'replay' (bundled recording) or 'auto' (real if on PATH, else replay) (sense.tegrastats_command)")
    p.add_argument("--cgroup", metavar="PATH", help="cgroup directory to watch (sense.cgroup)")
    p.add_argument("--model", choices=["classic", "fused"], help="stress model (signal.model)")
    return p


def overrides_from_args(args) -> dict:
    """Command-line options as {"section": {"key": value}}."""
    o: dict = {"daemon": {}, "sense": {}, "signal": {}}
    if args.socket:
        o["daemon"]["socket"] = os.path.abspath(args.socket)
    if args.state_dir:
        o["daemon"]["state_dir"] = os.path.abspath(args.state_dir)
    if args.log_level:
        o["daemon"]["log_level"] = args.log_level
    if args.proc_root:
        o["sense"]["proc_root"] = args.proc_root
    if args.tegrastats:
        o["sense"]["tegrastats_command"] = args.tegrastats
    if args.cgroup is not None:
        o["sense"]["cgroup"] = args.cgroup
    if args.model:
        o["signal"]["model"] = args.model
    return o


def cmd_run(args) -> int:
    config_file = args.config
    if config_file is None and args.local is None and os.path.exists(config_mod.DEFAULT_CONFIG_FILE):
        config_file = config_mod.DEFAULT_CONFIG_FILE
    log_mod.setup(args.log_level or "info")
    log = log_mod.get_logger("daemon")
    try:
        base = None
        if args.local is not None:
            base = config_mod.local_defaults(args.local).with_overrides(
                {"sense": {"tegrastats_command": "auto"}})
        overrides = overrides_from_args(args)
        cfg = config_mod.load(config_file, base).with_overrides(overrides)
        log_mod.setup(cfg.daemon.log_level)
    except (ConfigError, ValueError) as exc:
        log.error("config_error", reason=str(exc), file=config_file or "-")
        return EXIT_CONFIG
    if args.local is not None:
        log.info("local_mode", socket=cfg.daemon.socket, state_dir=cfg.daemon.state_dir)
    from . import app
    from .listener import ListenError
    try:
        return app.run(cfg, config_file, overrides, base)
    except ListenError as exc:
        log.error("cannot_listen", reason=str(exc))
        return EXIT_LISTEN
    except ConfigError as exc:
        log.error("config_error", reason=str(exc))
        return EXIT_CONFIG
    except AalError as exc:
        log.error("fatal", reason=str(exc), kind=type(exc).__name__)
        return EXIT_STATE
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - a bug: one structured line with its traceback
        log.error("crash", exc_info=exc, error=repr(exc))
        return EXIT_FAIL


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="aal-core", description="aal-core memory-stress daemon")
    parser.add_argument("--version", action="version", version=f"aal-core {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] != ["export"]:
        # `aal-core export` keeps the control loop's modules (and asyncio)
        # out of its RSS (README "The exporter's unit and its cost").
        from .venom import standalone as venom_cli
        venom_cli.add_parser(sub)
    from .export import cli as export_cli
    export_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "venom":
        return venom_cli.cmd_venom(args)
    if args.command == "export":
        return export_cli.cmd_export(args)
    parser.error(f"unknown command {args.command}")
    return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
