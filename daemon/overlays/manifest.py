"""manifest.json: what an overlay declares it can do, validated in full.

Pure: `parse(text, where, root)` reads no file except to resolve the paths
the manifest names inside `root` (the overlay's directory), so a manifest
can never point the daemon outside it.  Every problem is reported, each as
one line naming the file and the JSON path:

    abraxas/manifest.json: capabilities.scan.timeout_s must be a positive number, got "soon"

`ManifestError.problems` holds them all; the first is the exception's text.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import AalError
from ..runes import resolve

NAME = re.compile(r"[a-z0-9_-]{1,64}")
PHASES = ("OPEN", "ALIGN", "ASCEND", "CLEAR", "SEAL")
CLASSES = ("analysis", "exec")
RUNNERS = ("proc", "http")
MAX_MANIFEST_BYTES = 256 * 1024
MAX_TIMEOUT_S = 3600.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

TOP_KEYS = {"name", "version", "description", "entrypoints", "phases", "capabilities", "resources", "policy"}
CAP_KEYS = {"runner", "path", "method", "timeout_s", "phases", "class", "default_profile", "degradation",
            "description"}


class ManifestError(AalError):
    """A manifest that cannot be used; `problems` lists every reason."""

    def __init__(self, problems: list[str]):
        super().__init__(problems[0] if len(problems) == 1 else
                         f"{problems[0]} (and {len(problems) - 1} more problem(s))")
        self.problems = problems


@dataclass(frozen=True)
class Capability:
    name: str
    runner: str
    cls: str                      # "analysis" | "exec"
    timeout_s: float
    phases: tuple[str, ...]       # the phases it may run in (the overlay's when not given)
    default_profile: str
    path: str | None = None       # proc: a file in the overlay dir appended to the command; http: URL path
    method: str = "POST"
    max_fraction: float | None = None
    disable_nonessential: bool = False


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    description: str
    phases: tuple[str, ...]
    capabilities: dict
    command: tuple[str, ...] | None = None     # proc entrypoint argv
    base_url: str | None = None                # http entrypoint
    unix_socket: str | None = None             # resolved socket path of a unix: base_url
    prefers_gpu: bool = False
    notes: str = ""
    deterministic: bool = False
    manifest_hash: str = ""                    # SHA-256 of the file's bytes
    root: str = ""
    raw: dict = field(default_factory=dict, compare=False)

    def summary(self) -> dict:
        caps = {n: {"runner": c.runner, "class": c.cls, "phases": list(c.phases),
                    "timeout_s": c.timeout_s, "default_profile": c.default_profile}
                for n, c in self.capabilities.items()}
        return {"name": self.name, "version": self.version, "description": self.description,
                "phases": list(self.phases), "capabilities": caps, "deterministic": self.deterministic,
                "prefers_gpu": self.prefers_gpu, "manifest_hash": self.manifest_hash}


def _show(v) -> str:
    s = json.dumps(v) if not isinstance(v, str) else json.dumps(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _kind(v) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


def inside(root: str, rel: str) -> str | None:
    """The real path of `rel` under `root`, or None when it escapes it (by
    `..`, an absolute path or a symlink pointing out)."""
    if os.path.isabs(rel) or "\x00" in rel:
        return None
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, rel))
    if real != real_root and not real.startswith(real_root + os.sep):
        return None
    return real


class _Checker:
    def __init__(self, where: str, root: str | None, allow_tcp: bool, allow_remote: bool):
        self.where = where
        self.root = root
        self.allow_tcp = allow_tcp
        self.allow_remote = allow_remote
        self.problems: list[str] = []

    def bad(self, path: str, text: str) -> None:
        self.problems.append(f"{self.where}: {path} {text}")

    def typed(self, obj: dict, key: str, path: str, t, required: bool = False, what: str = ""):
        if key not in obj:
            if required:
                self.bad(path, "is required")
            return None
        v = obj[key]
        ok = isinstance(v, t) and not (t in (int, float, (int, float)) and isinstance(v, bool))
        if not ok:
            self.bad(path, f"must be {what or _kind(t())}, got {_show(v)}")
            return None
        return v

    def unknown(self, obj: dict, known: set, prefix: str) -> None:
        for k in obj:
            if k not in known:
                self.bad(f"{prefix}{k}", f"is not a known key (known: {', '.join(sorted(known))})")

    def path_in_root(self, rel: str, path: str, must_exist: bool = True) -> str | None:
        if self.root is None:
            return rel
        if ".." in rel.replace("\\", "/").split("/") or os.path.isabs(rel):
            self.bad(path, f"must be a path inside the overlay directory, got {_show(rel)}")
            return None
        real = inside(self.root, rel)
        if real is None:
            self.bad(path, f"points outside the overlay directory (a symlink out?): {_show(rel)}")
            return None
        if must_exist and not os.path.exists(real):
            self.bad(path, f"names {_show(rel)}, which does not exist in the overlay directory")
            return None
        return real

    def phases(self, v, path: str) -> tuple[str, ...]:
        if not isinstance(v, list) or not v:
            self.bad(path, f"must be a non-empty array of phases ({', '.join(PHASES)}), got {_show(v)}")
            return ()
        out = []
        for i, ph in enumerate(v):
            if ph not in PHASES:
                self.bad(f"{path}[{i}]", f"must be one of {', '.join(PHASES)}, got {_show(ph)}")
            elif ph in out:
                self.bad(f"{path}[{i}]", f"repeats {ph}")
            else:
                out.append(ph)
        return tuple(out)

    def command(self, ep: dict) -> tuple[str, ...] | None:
        cmd = ep.get("command")
        if not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) and a for a in cmd):
            self.bad("entrypoints.proc.command", f"must be a non-empty array of non-empty strings, got {_show(cmd)}")
            return None
        for i, a in enumerate(cmd):
            if "\x00" in a:
                self.bad(f"entrypoints.proc.command[{i}]", "contains a NUL byte")
                return None
            parts = a.replace("\\", "/").split("/")
            if ".." in parts:
                self.bad(f"entrypoints.proc.command[{i}]", f"must not contain a .. path component, got {_show(a)}")
        argv0 = cmd[0]
        if os.path.isabs(argv0):
            self.bad("entrypoints.proc.command[0]",
                     f"must be a program name looked up on PATH or a path inside the overlay directory, "
                     f"got the absolute path {_show(argv0)}")
        elif "/" in argv0:
            self.path_in_root(argv0, "entrypoints.proc.command[0]")
        # Arguments that name files of the overlay must stay inside it.
        if self.root is not None:
            for i, a in enumerate(cmd[1:], 1):
                if not a.startswith("-") and not os.path.isabs(a) and os.path.lexists(os.path.join(self.root, a)):
                    self.path_in_root(a, f"entrypoints.proc.command[{i}]")
        return tuple(cmd)

    def base_url(self, url) -> tuple[str | None, str | None]:
        if not isinstance(url, str) or not url:
            self.bad("entrypoints.http.base_url", f"must be a string, got {_show(url)}")
            return None, None
        if url.startswith("unix:"):
            rel = url[len("unix:"):]
            if not rel:
                self.bad("entrypoints.http.base_url", "unix: needs a socket path inside the overlay directory")
                return None, None
            if os.path.isabs(rel) or ".." in rel.split("/"):
                self.bad("entrypoints.http.base_url",
                         f"the socket must be inside the overlay directory, got {_show(url)}")
                return None, None
            sock = self.path_in_root(rel, "entrypoints.http.base_url", must_exist=False)
            if sock is not None and self.root is not None and len(sock.encode()) > 107:
                self.bad("entrypoints.http.base_url", f"socket path {sock} is longer than 107 bytes (AF_UNIX limit)")
            return url, sock
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            self.bad("entrypoints.http.base_url",
                     f"must be unix:<socket in the overlay directory> or http://host:port, got {_show(url)}")
            return None, None
        try:
            parts.port
        except ValueError:
            self.bad("entrypoints.http.base_url", f"has a bad port: {_show(url)}")
            return None, None
        if parts.hostname in LOOPBACK_HOSTS:
            if not self.allow_tcp:
                self.bad("entrypoints.http.base_url",
                         f"TCP loopback is not allowed (overlays.allow_tcp_loopback = false; "
                         f"use unix:<socket>), got {_show(url)}")
                return None, None
        elif not self.allow_remote:
            self.bad("entrypoints.http.base_url",
                     f"must be a Unix socket or loopback (overlays.allow_remote_http = false), got {_show(url)}")
            return None, None
        return url, None

    def capability(self, name: str, c, top_phases: tuple[str, ...], has: dict) -> Capability | None:
        p = f"capabilities.{name}"
        if not NAME.fullmatch(name):
            self.bad(p, "is not a valid capability name ([a-z0-9_-]{1,64})")
            return None
        if not isinstance(c, dict):
            self.bad(p, f"must be an object, got {_show(c)}")
            return None
        self.unknown(c, CAP_KEYS, p + ".")
        n0 = len(self.problems)
        runner = self.typed(c, "runner", f"{p}.runner", str, required=True)
        if runner is not None and runner not in RUNNERS:
            self.bad(f"{p}.runner", f"must be one of {', '.join(RUNNERS)}, got {_show(runner)}")
        elif runner is not None and not has.get(runner):
            self.bad(f"{p}.runner", f"is {runner!r} but the manifest has no entrypoints.{runner}")
        cls = self.typed(c, "class", f"{p}.class", str, required=True)
        if cls is not None and cls not in CLASSES:
            self.bad(f"{p}.class", f"must be one of {', '.join(CLASSES)}, got {_show(cls)}")
        timeout = c.get("timeout_s", 30.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT_S:
            self.bad(f"{p}.timeout_s", f"must be a positive number (at most {MAX_TIMEOUT_S:g}), got {_show(timeout)}")
        # Without its own list: the overlay's phases that its class may run in.
        phases = tuple(ph for ph in top_phases
                       if not (cls == "analysis" and ph == "ASCEND") and not (cls == "exec" and ph == "CLEAR"))
        if "phases" in c:
            phases = self.phases(c["phases"], f"{p}.phases")
            for ph in phases:
                if ph not in top_phases:
                    self.bad(f"{p}.phases", f"names {ph}, which the overlay's phases do not include")
        if cls == "analysis" and "ASCEND" in phases and "phases" in c:
            self.bad(f"{p}.phases", "names ASCEND, which admits only capabilities of class exec")
        if cls == "exec" and "CLEAR" in phases and "phases" in c:
            self.bad(f"{p}.phases", "names CLEAR, which admits only capabilities of class analysis")
        profile = self.typed(c, "default_profile", f"{p}.default_profile", str) or "MINIMAL"
        try:
            resolve(profile)
        except Exception as exc:  # noqa: BLE001 - a ParseError with its position
            self.bad(f"{p}.default_profile", f"is not a profile name or rune text: {exc}")
        path = self.typed(c, "path", f"{p}.path", str)
        if path is not None and runner == "proc":
            self.path_in_root(path, f"{p}.path")
        elif path is not None and runner == "http" and not path.startswith("/"):
            self.bad(f"{p}.path", f"must be a URL path starting with /, got {_show(path)}")
        method = self.typed(c, "method", f"{p}.method", str) or "POST"
        if "method" in c and runner == "proc":
            self.bad(f"{p}.method", "applies to http capabilities only")
        elif method != "POST":
            self.bad(f"{p}.method", f"must be POST (the request is canonical JSON), got {_show(method)}")
        self.typed(c, "description", f"{p}.description", str)
        deg = self.typed(c, "degradation", f"{p}.degradation", dict)
        max_fraction, nonessential = None, False
        if deg is not None:
            self.unknown(deg, {"max_fraction", "disable_nonessential"}, f"{p}.degradation.")
            mf = deg.get("max_fraction")
            if mf is not None and (isinstance(mf, bool) or not isinstance(mf, (int, float)) or not 0 <= mf <= 1):
                self.bad(f"{p}.degradation.max_fraction", f"must be a number from 0 to 1, got {_show(mf)}")
            else:
                max_fraction = None if mf is None else float(mf)
            nonessential = self.typed(deg, "disable_nonessential", f"{p}.degradation.disable_nonessential",
                                      bool) or False
        if len(self.problems) > n0 or runner is None or cls is None:
            return None
        return Capability(name=name, runner=runner, cls=cls, timeout_s=float(timeout), phases=phases,
                          default_profile=profile, path=path, method=method, max_fraction=max_fraction,
                          disable_nonessential=nonessential)


def parse(data: bytes, where: str, root: str | None = None, *, allow_tcp: bool = False,
          allow_remote: bool = False, check_dirname: bool = True) -> Manifest:
    """Validate the bytes of a manifest.json; raise ManifestError with every problem.
    `where` names the file in messages (e.g. "abraxas/manifest.json")."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError([f"{where}: is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} byte limit"])
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        pos = f" at line {line} column {exc.colno}" if line else ""
        raise ManifestError([f"{where}: is not JSON{pos}: {getattr(exc, 'msg', exc)}"]) from None
    if not isinstance(obj, dict):
        raise ManifestError([f"{where}: must be a JSON object, got {_kind(obj)}"])
    ck = _Checker(where, root, allow_tcp, allow_remote)
    ck.unknown(obj, TOP_KEYS, "")
    name = ck.typed(obj, "name", "name", str, required=True)
    if name is not None and not NAME.fullmatch(name):
        ck.bad("name", f"must be 1-64 characters of a-z 0-9 _ -, got {_show(name)}")
        name = None
    if name is not None and root is not None and check_dirname and os.path.basename(os.path.normpath(root)) != name:
        ck.bad("name", f"is {name!r} but the directory is named {os.path.basename(os.path.normpath(root))!r}")
    version = ck.typed(obj, "version", "version", str, required=True)
    if version is not None and not re.fullmatch(r"[A-Za-z0-9._+-]{1,64}", version):
        ck.bad("version", f"must be 1-64 characters of A-Z a-z 0-9 . _ + -, got {_show(version)}")
    description = ck.typed(obj, "description", "description", str) or ""
    eps = ck.typed(obj, "entrypoints", "entrypoints", dict, required=True)
    command = base_url = sock = None
    has = {}
    if eps is not None:
        ck.unknown(eps, set(RUNNERS), "entrypoints.")
        if not any(k in eps for k in RUNNERS):
            ck.bad("entrypoints", "must have proc or http (or both)")
        if "proc" in eps:
            ep = ck.typed(eps, "proc", "entrypoints.proc", dict)
            if ep is not None:
                ck.unknown(ep, {"command"}, "entrypoints.proc.")
                if "command" not in ep:
                    ck.bad("entrypoints.proc.command", "is required")
                else:
                    command = ck.command(ep)
                has["proc"] = command is not None
        if "http" in eps:
            ep = ck.typed(eps, "http", "entrypoints.http", dict)
            if ep is not None:
                ck.unknown(ep, {"base_url"}, "entrypoints.http.")
                if "base_url" not in ep:
                    ck.bad("entrypoints.http.base_url", "is required")
                else:
                    base_url, sock = ck.base_url(ep["base_url"])
                has["http"] = base_url is not None
    phases: tuple[str, ...] = ()
    if "phases" not in obj:
        ck.bad("phases", "is required")
    else:
        phases = ck.phases(obj["phases"], "phases")
    caps_obj = ck.typed(obj, "capabilities", "capabilities", dict, required=True)
    caps = {}
    if caps_obj is not None:
        if not caps_obj:
            ck.bad("capabilities", "must declare at least one capability")
        for cname, c in caps_obj.items():
            cap = ck.capability(cname, c, phases, has)
            if cap is not None:
                caps[cname] = cap
        if "ASCEND" in phases and caps and not any(c.cls == "exec" and "ASCEND" in c.phases
                                                   for c in caps.values()):
            ck.bad("phases", "includes ASCEND, which needs a capability of class exec")
    res = ck.typed(obj, "resources", "resources", dict) or {}
    ck.unknown(res, {"prefers_gpu", "notes"}, "resources.")
    prefers_gpu = ck.typed(res, "prefers_gpu", "resources.prefers_gpu", bool) or False
    notes = ck.typed(res, "notes", "resources.notes", str) or ""
    pol = ck.typed(obj, "policy", "policy", dict) or {}
    ck.unknown(pol, {"deterministic"}, "policy.")
    deterministic = ck.typed(pol, "deterministic", "policy.deterministic", bool) or False
    if ck.problems:
        raise ManifestError(ck.problems)
    return Manifest(name=name, version=version, description=description, phases=phases,
                    capabilities=caps, command=command, base_url=base_url, unix_socket=sock,
                    prefers_gpu=prefers_gpu, notes=notes, deterministic=deterministic,
                    manifest_hash=hashlib.sha256(data).hexdigest(), root=root or "", raw=obj)


def load(directory: str, *, allow_tcp: bool = False, allow_remote: bool = False,
         check_dirname: bool = True) -> Manifest:
    """Read and validate `<directory>/manifest.json` (no symlink for the file itself).
    `check_dirname`: the manifest's name must be the directory's (not for an
    install's source, which is copied to overlays.dir/<name>)."""
    name = os.path.basename(os.path.normpath(directory))
    where = f"{name}/manifest.json"
    path = os.path.join(directory, "manifest.json")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ManifestError([f"{where}: does not exist"]) from None
    except OSError as exc:
        raise ManifestError([f"{where}: cannot be read: {exc.strerror}"
                             + (" (a symlink?)" if exc.errno == 40 else "")]) from None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_MANIFEST_BYTES + 1)
    return parse(data, where, directory, allow_tcp=allow_tcp, allow_remote=allow_remote,
                 check_dirname=check_dirname)
