"""`aalctl`: talk to the daemon from a shell.

    aalctl [--socket PATH] status            readable summary
    aalctl [--socket PATH] call METHOD [JSON] result as JSON; error on stderr, exit 1
    aalctl [--socket PATH] watch TOPIC [JSON] follow a subscription, one JSON line per push
    aalctl [--socket PATH] overlay ...        the overlay bus (overlay_cli.py; replay's own exit codes)
    aalctl [--socket PATH] provenance ...     the provenance log (verify: exit 1 when a record is bad)
    aalctl fleet status|watch [--redis-url URL] the fleet from Redis Streams (daemon/fleet/cli.py)

Exit codes: 0 ok, 1 the daemon answered with an error, 2 usage error,
3 cannot connect.
"""
from __future__ import annotations

import argparse
import json
import sys

from . import Client, ConnectError, RpcCallError, default_socket

EXIT_OK, EXIT_RPC, EXIT_USAGE, EXIT_CONNECT = 0, 1, 2, 3


def _fmt_status(s: dict) -> str:
    hw = s.get("hardware", {})
    hw_text = hw.get("kind", "?")
    if hw.get("jetson_model"):
        hw_text += f" ({hw['jetson_model']}, L4T {hw.get('l4t_release', '?')})"
    elif hw.get("gpus"):
        hw_text += f" ({', '.join(hw['gpus'])})"
    elif hw.get("note"):
        hw_text += f" ({hw['note']})"
    conns = s.get("connections", {})
    lines = [
        f"aal-core {s.get('version')}  pid {s.get('pid')}  up {s.get('uptime_s', 0):.0f}s",
        f"  socket    {s.get('socket')}{'  (socket-activated)' if s.get('socket_activated') else ''}",
        f"  state     {s.get('state_dir')}",
        f"  config    {s.get('config_file', '(defaults)')}",
        f"  clients   {conns.get('open', 0)} open / {conns.get('max', 0)} max",
        f"  hardware  {hw_text}",
        f"  runtime   {s.get('event_loop')}, {s.get('json_library')}",
    ]
    for src in s.get("sources", []):
        state = "present" if src.get("present") else "absent"
        extra = f" [{src['mode']}]" if src.get("mode") else ""
        why = f": {src['reason']}" if src.get("reason") else ""
        lines.append(f"  source    {src.get('name')}: {state}{extra}{why}")
    lines.append(f"  summary   {s.get('summary')}")
    return "\n".join(lines)


class UsageError(Exception):
    pass


def _parse_params(text: str | None):
    if text is None:
        return None
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"params are not valid JSON: {exc}") from None
    if not isinstance(params, (list, dict)):
        raise UsageError("params must be a JSON array or object, e.g. '{\"key\": 1}'")
    return params


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aalctl", description="control and inspect aal-core")
    p.add_argument("--socket", default=None, help=f"daemon socket (default $AAL_CORE_SOCKET or {default_socket()})")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="readable summary of the daemon")
    c = sub.add_parser("call", help="call a method; print its result as JSON")
    c.add_argument("method")
    c.add_argument("params", nargs="?", help="JSON array or object")
    w = sub.add_parser("watch", help="follow a subscription (e.g. stress)")
    w.add_argument("topic")
    w.add_argument("params", nargs="?", help="JSON params for TOPIC.subscribe")
    w.add_argument("--count", type=int, default=0, help="stop after N notifications (0 = forever)")
    from ..ledger import cli as ledger_cli  # offline: `aalctl ledger ...` needs no daemon
    ledger_cli.add_parser(sub)
    from . import overlay_cli
    overlay_cli.add_parser(sub)
    from ..fleet import cli as fleet_cli  # Redis, not the daemon: `aalctl fleet ...`
    fleet_cli.add_parser(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = COMMANDS.get(args.command)
    try:
        return handler(args)
    except UsageError as exc:
        print(f"aalctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectError as exc:
        print(f"aalctl: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    except RpcCallError as exc:
        err = {"code": exc.code, "message": exc.message}
        if exc.data is not None:
            err["data"] = exc.data
        print(f"aalctl: error: {json.dumps(err)}", file=sys.stderr)
        return EXIT_RPC
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:
        print(f"aalctl: connection to aal-core failed: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONNECT


def cmd_status(args) -> int:
    with Client(args.socket) as c:
        print(_fmt_status(c.call("system.status")))
    return EXIT_OK


def cmd_call(args) -> int:
    params = _parse_params(args.params)
    with Client(args.socket) as c:
        print(json.dumps(c.call(args.method, params), indent=2, sort_keys=True))
    return EXIT_OK


def cmd_watch(args) -> int:
    params = _parse_params(args.params)
    with Client(args.socket, timeout=None) as c:
        n = 0
        for note in c.subscribe(args.topic, params):
            print(json.dumps(note, separators=(",", ":")), flush=True)
            n += 1
            if args.count and n >= args.count:
                break
    return EXIT_OK


def cmd_ledger(args) -> int:
    from ..ledger import cli as ledger_cli
    return ledger_cli.run(args)


def cmd_overlay(args) -> int:
    from . import overlay_cli
    with Client(args.socket, timeout=None) as c:
        return overlay_cli.run_overlay(args, c)


def cmd_provenance(args) -> int:
    from . import overlay_cli
    with Client(args.socket) as c:
        return overlay_cli.run_provenance(args, c)


def cmd_fleet(args) -> int:
    from ..fleet import cli as fleet_cli
    return fleet_cli.run(args)


COMMANDS = {"status": cmd_status, "call": cmd_call, "watch": cmd_watch, "ledger": cmd_ledger,
            "overlay": cmd_overlay, "provenance": cmd_provenance, "fleet": cmd_fleet}

if __name__ == "__main__":
    sys.exit(main())
