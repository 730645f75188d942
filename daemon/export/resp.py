"""The few Redis commands the fleet publisher sends, spoken as RESP2 over one
blocking socket (redis://, rediss://, unix:// URLs as redis-py reads them).

Why not redis-py here: `import redis` (8.x) loads redis.asyncio, the cluster
commands, asyncio and importlib.metadata, +9.5 MiB of the exporter's RSS
(README "The exporter's unit and its cost"), for PING, AUTH, SELECT, XADD and
XREVRANGE.  The consumer side (aal_core.fleet, `aalctl fleet`) keeps
redis-py.  TLS (rediss://) imports ssl only when asked for.
"""
from __future__ import annotations

import socket
import urllib.parse


class RespError(Exception):
    """An error reply from the server (-ERR ...)."""


def parse_url(url: str) -> dict:
    """{"unix"|"host","port", "tls", "db", "username", "password"} from a Redis URL."""
    u = urllib.parse.urlparse(url)
    q = urllib.parse.parse_qs(u.query)
    out = {"tls": u.scheme == "rediss", "username": urllib.parse.unquote(u.username) if u.username else None,
           "password": urllib.parse.unquote(u.password) if u.password else None, "db": 0}
    if "password" in q:
        out["password"] = q["password"][0]
    if u.scheme == "unix":
        out["unix"] = u.path
        if "db" in q:
            out["db"] = int(q["db"][0])
    elif u.scheme in ("redis", "rediss"):
        out["host"] = u.hostname or "localhost"
        out["port"] = u.port or 6379
        path = u.path.lstrip("/")
        if path:
            out["db"] = int(path)
        elif "db" in q:
            out["db"] = int(q["db"][0])
    else:
        raise ValueError(f"not a Redis URL: {url!r} (redis://, rediss:// or unix://)")
    return out


def _arg(a) -> bytes:
    if isinstance(a, bytes):
        return a
    return (a if isinstance(a, str) else repr(a) if isinstance(a, float) else str(a)).encode()


def encode(*args) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = _arg(a)
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class Resp:
    """One connection; `pipeline(commands)` writes them all, then reads every reply."""

    def __init__(self, url: str, connect_timeout: float = 2.0, timeout: float = 5.0):
        self.opts = parse_url(url)
        self.connect_timeout, self.timeout = connect_timeout, timeout
        self.sock: socket.socket | None = None
        self._f = None

    def connect(self) -> None:
        o = self.opts
        if "unix" in o:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.connect_timeout)
            try:
                s.connect(o["unix"])
            except OSError:
                s.close()
                raise
        else:
            s = socket.create_connection((o["host"], o["port"]), timeout=self.connect_timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if o["tls"]:
                import ssl
                s = ssl.create_default_context().wrap_socket(s, server_hostname=o["host"])
        s.settimeout(self.timeout)
        self.sock, self._f = s, s.makefile("rb")
        setup = []
        if o["password"] is not None:
            setup.append(("AUTH", o["username"], o["password"]) if o["username"] else ("AUTH", o["password"]))
        if o["db"]:
            setup.append(("SELECT", o["db"]))
        if setup:
            for r in self.pipeline(setup):
                if isinstance(r, RespError):
                    raise r

    def command(self, *args):
        r = self.pipeline([args])[0]
        if isinstance(r, RespError):
            raise r
        return r

    def pipeline(self, commands) -> list:
        """Replies in order; an error reply is a RespError in its place (not raised)."""
        if self.sock is None:
            self.connect()
        self.sock.sendall(b"".join(encode(*c) for c in commands))
        return [self._reply() for _ in commands]

    def _line(self) -> bytes:
        line = self._f.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("Redis closed the connection")
        return line[:-2]

    def _reply(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return RespError(rest.decode(errors="replace"))
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self._f.read(n + 2)
            if len(data) != n + 2:
                raise ConnectionError("Redis closed the connection")
            return data[:-2]
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise ConnectionError(f"not a RESP2 reply: {line[:40]!r}")

    def close(self) -> None:
        if self.sock is not None:
            try:
                self._f.close()
                self.sock.close()
            except OSError:
                pass
        self.sock = self._f = None
