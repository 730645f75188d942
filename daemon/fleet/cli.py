"""`aalctl fleet status` / `aalctl fleet watch`: the fleet from Redis.

    aalctl fleet status [--redis-url URL] [--group G] [--json]
        read every board's streams with the consumer group (claiming what a
        dead consumer left pending), then print each board's latest sample,
        band, last head (verified or not) and the issues found
    aalctl fleet watch  [--redis-url URL] [--group G] [--count N]
        follow the streams, one JSON line per entry (issues included)

The URL defaults to fleet.redis_url of the config file (--config, default
/etc/aal-core/aal-core.toml if it exists).  Exit codes: 0 ok, 1 a board's
ledger was rewritten or a head is forged (status), 2 usage, 3 Redis unreachable.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

EXIT_OK, EXIT_ISSUES, EXIT_USAGE, EXIT_CONNECT = 0, 1, 2, 3
SERIOUS = ("forged", "rewritten", "key_changed")


def add_parser(sub) -> None:
    f = sub.add_parser("fleet", help="the fleet's boards from Redis Streams (aal-core export's [fleet])")
    fsub = f.add_subparsers(dest="fleet_command", required=True)
    for name, help_ in (("status", "latest state of every board, ledger heads checked"),
                        ("watch", "follow every board's streams, one JSON line per entry")):
        p = fsub.add_parser(name, help=help_)
        p.add_argument("--redis-url", help="redis://host:port/db (default: fleet.redis_url of the config)")
        p.add_argument("--config", metavar="FILE", help="config file to read fleet.redis_url from")
        p.add_argument("--group", default="aalctl", help="consumer group (default aalctl)")
        p.add_argument("--consumer", default=f"{socket.gethostname()}-{os.getpid()}", help="consumer name")
        p.add_argument("--min-idle-ms", type=int, default=30000,
                       help="claim entries pending on another consumer for longer than this")
        if name == "status":
            p.add_argument("--json", action="store_true", help="print JSON")
        else:
            p.add_argument("--count", type=int, default=0, help="stop after N entries (0 = forever)")


def _url(args) -> str:
    if args.redis_url:
        return args.redis_url
    from .. import config as config_mod
    path = args.config or (config_mod.DEFAULT_CONFIG_FILE if os.path.exists(config_mod.DEFAULT_CONFIG_FILE)
                           else None)
    url = config_mod.load(path).fleet.redis_url if path else ""
    if not url:
        raise ValueError("no Redis URL: give --redis-url, or set fleet.redis_url in the config")
    return url


def _fmt(boards) -> str:
    lines = []
    for node in sorted(boards):
        b = boards[node]
        s = b.sample or {}
        h = b.head or {}
        bad = [i for i in b.issues if i["kind"] in SERIOUS]
        lines.append(f"{node}: stress {s.get('stress', '?')} {s.get('band', '?')}  "
                     f"ledger {h.get('size', '?')} entries, {b.heads_verified} heads verified"
                     + (f"  gaps {b.gaps}" if b.gaps else ""))
        for i in bad or b.issues[-3:]:
            lines.append(f"  {i['kind'].upper()}: {i['reason']} (head size {i.get('size')})")
    return "\n".join(lines) or "no boards on this Redis"


async def _run(args) -> int:
    import redis.asyncio as aioredis
    from .consumer import FleetConsumer
    r = aioredis.from_url(_url(args), socket_connect_timeout=3.0)
    try:
        await r.ping()
        if args.fleet_command == "status":
            c = FleetConsumer(r, args.group, args.consumer, min_idle_ms=args.min_idle_ms)
            await c.drain()
            await c.fill_latest()
            if args.json:
                print(json.dumps({n: b.to_dict() for n, b in c.boards.items()}, indent=2, sort_keys=True))
            else:
                print(_fmt(c.boards))
            serious = any(i["kind"] in SERIOUS for b in c.boards.values() for i in b.issues)
            return EXIT_ISSUES if serious else EXIT_OK
        seen = [0]

        def show(node, kind, eid, fields, issue):
            out = {"node": node, "stream": kind, "id": eid, "fields": fields}
            if issue:
                out["issue"] = issue
            print(json.dumps(out, separators=(",", ":"), default=str), flush=True)
            seen[0] += 1
        c = FleetConsumer(r, args.group, args.consumer, min_idle_ms=args.min_idle_ms, on_entry=show)
        while not args.count or seen[0] < args.count:
            await c.poll(block_ms=1000)
        return EXIT_OK
    finally:
        await r.aclose()


def run(args) -> int:
    from redis.exceptions import ConnectionError as RedisConnectionError, RedisError
    try:
        return asyncio.run(_run(args))
    except ValueError as exc:
        print(f"aalctl fleet: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RedisConnectionError, OSError) as exc:
        print(f"aalctl fleet: cannot reach Redis: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    except RedisError as exc:
        print(f"aalctl fleet: Redis error: {exc}", file=sys.stderr)
        return EXIT_CONNECT
