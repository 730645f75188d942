"""The overlays the daemon knows: the directories under overlays.dir, whether
each is enabled (state_dir/overlays-state.json), and their parsed manifests.

Hot swap is by re-reading: `rescan()` runs on `overlay.rescan`, on
`system.reload` (SIGHUP) and after install/enable/disable/remove; nothing
watches the directory.  An entry is immutable: a call holds the `Entry` it
started with, so a swap while it runs changes only later calls.  An
upgraded or removed overlay's old directory is moved aside (never
overwritten in place) and deleted once no call uses it.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field

from ..ledger.store import create_atomic
from ..log import get_logger
from .manifest import NAME, Manifest, ManifestError, load

log = get_logger("overlays.registry")

STATE_FILE = "overlays-state.json"
TRASH = ".trash"


@dataclass(frozen=True)
class Entry:
    name: str
    directory: str
    enabled: bool
    manifest: Manifest | None
    problems: tuple[str, ...] = ()
    git_commit: str | None = None
    generation: int = 0
    users: list = field(default_factory=list, compare=False)   # running calls (a list used as a counter)
    # Where the directory is now ([path]): moved aside on upgrade/remove while a call uses it.
    loc: list = field(default_factory=list, compare=False)

    def __post_init__(self):
        if not self.loc:
            self.loc.append(self.directory)

    @property
    def where(self) -> str:
        return self.loc[0]

    def to_dict(self) -> dict:
        out = {"name": self.name, "enabled": self.enabled, "valid": self.manifest is not None,
               "directory": self.directory, "generation": self.generation}
        if self.manifest is not None:
            out.update(self.manifest.summary())
        if self.problems:
            out["problems"] = list(self.problems)
        if self.git_commit:
            out["git_commit"] = self.git_commit
        out["running"] = len(self.users)
        return out


def git_commit(directory: str) -> str | None:
    """HEAD of the overlay's directory when it is a git checkout (read, no git needed)."""
    head = os.path.join(directory, ".git", "HEAD")
    try:
        with open(head) as fh:
            ref = fh.read().strip()
        if ref.startswith("ref: "):
            name = ref[5:]
            path = os.path.join(directory, ".git", name)
            if os.path.exists(path):
                with open(path) as fh:
                    return fh.read().strip()
            packed = os.path.join(directory, ".git", "packed-refs")
            with open(packed) as fh:
                for line in fh:
                    parts = line.split()
                    if len(parts) == 2 and parts[1] == name:
                        return parts[0]
            return None
        return ref or None
    except OSError:
        return None


def _check_tree(src: str) -> list[str]:
    """Symlinks in an overlay directory must stay inside it."""
    problems = []
    real_root = os.path.realpath(src)
    for dirpath, dirnames, filenames in os.walk(src):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                target = os.path.realpath(p)
                if target != real_root and not target.startswith(real_root + os.sep):
                    rel = os.path.relpath(p, src)
                    problems.append(f"{os.path.basename(os.path.normpath(src))}/{rel}: is a symlink "
                                    f"out of the overlay directory (to {os.readlink(p)})")
        dirnames[:] = [d for d in dirnames if d != ".git"]
    return problems


def source_dir(path: str) -> str:
    """An install source: the overlay's directory, or its manifest.json (the
    source is the directory holding it)."""
    path = os.path.abspath(path)
    if os.path.basename(path) == "manifest.json" and os.path.isfile(path):
        return os.path.dirname(path)
    return path


class OverlayRegistry:
    def __init__(self, directory: str, state_dir: str, *, allow_tcp: bool = False, allow_remote: bool = False):
        self.dir = directory
        self.state_path = os.path.join(state_dir, STATE_FILE)
        self.allow_tcp = allow_tcp
        self.allow_remote = allow_remote
        self.entries: dict[str, Entry] = {}
        self.enabled: dict[str, bool] = {}
        self.generation = 0
        self._retired: list[tuple[Entry, str]] = []     # (entry, directory to delete when idle)

    # ------------------------------------------------------------ state

    def load_state(self) -> None:
        try:
            with open(self.state_path) as fh:
                data = json.load(fh)
            self.enabled = {k: bool(v) for k, v in data.get("enabled", {}).items() if NAME.fullmatch(k)}
        except FileNotFoundError:
            self.enabled = {}
        except (OSError, ValueError) as exc:
            log.error("overlay_state_unreadable", path=self.state_path, error=str(exc), effect="all disabled")
            self.enabled = {}

    def save_state(self) -> None:
        """Durably (the ledger store's temp file, fsync, rename, directory
        fsync): after a crash the state is the old one or the new one."""
        os.makedirs(os.path.dirname(self.state_path), exist_ok=True)
        data = json.dumps({"enabled": self.enabled}, sort_keys=True).encode()
        create_atomic(self.state_path, data, "cannot write the overlay state", mode=0o600, error=OSError)

    # ------------------------------------------------------------- scan

    def _read(self, name: str) -> Entry:
        d = os.path.join(self.dir, name)
        problems: tuple[str, ...] = ()
        manifest = None
        tree = _check_tree(d)
        if tree:
            problems = tuple(tree)
        else:
            try:
                manifest = load(d, allow_tcp=self.allow_tcp, allow_remote=self.allow_remote)
            except ManifestError as exc:
                problems = tuple(exc.problems)
        return Entry(name=name, directory=d, enabled=self.enabled.get(name, False), manifest=manifest,
                     problems=problems, git_commit=git_commit(d), generation=self.generation)

    def rescan(self) -> dict:
        """Re-read every overlay directory.  Returns {added, removed, changed, broken}."""
        self.generation += 1
        try:
            names = sorted(n for n in os.listdir(self.dir)
                           if NAME.fullmatch(n) and os.path.isdir(os.path.join(self.dir, n))
                           and not os.path.islink(os.path.join(self.dir, n)))
        except FileNotFoundError:
            names = []
        new: dict[str, Entry] = {}
        changed = []
        for n in names:
            e = self._read(n)
            old = self.entries.get(n)
            if old is not None and old.manifest == e.manifest and old.enabled == e.enabled \
                    and old.problems == e.problems and old.git_commit == e.git_commit:
                new[n] = old              # unchanged: keep the same entry (and its generation)
                continue
            if old is not None:
                changed.append(n)
            if e.problems:
                for p in e.problems:
                    log.warning("overlay_invalid", overlay=n, problem=p)
            new[n] = e
        added = [n for n in new if n not in self.entries]
        removed = [n for n in self.entries if n not in new]
        self.entries = new
        self.reap()
        out = {"added": added, "removed": removed, "changed": changed,
               "broken": [n for n, e in new.items() if e.problems], "overlays": len(new),
               "generation": self.generation}
        if added or removed or changed:
            log.info("overlays_rescanned", added=",".join(added) or "-", removed=",".join(removed) or "-",
                     changed=",".join(changed) or "-")
        return out

    # ------------------------------------------------------ operations

    def get(self, name: str) -> Entry | None:
        return self.entries.get(name)

    def set_enabled(self, name: str, on: bool) -> Entry:
        self.enabled[name] = on
        self.save_state()
        self.rescan()
        return self.entries[name]

    def install(self, src: str, enable: bool = True) -> Entry:
        """Copy the overlay directory `src` into overlays.dir/<name> (validated
        first; an existing version is moved aside, not overwritten)."""
        src = source_dir(src)
        if not os.path.isdir(src):
            raise ManifestError([f"{src}: is not a directory"])
        problems = _check_tree(src)
        if problems:
            raise ManifestError(problems)
        # Validated where it is, under its own name, then again where it lands.
        name = load(src, allow_tcp=self.allow_tcp, allow_remote=self.allow_remote, check_dirname=False).name
        os.makedirs(self.dir, exist_ok=True)
        tmp = os.path.join(self.dir, f".{name}.{uuid.uuid4().hex[:8]}.new")
        shutil.copytree(src, tmp, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        dest = os.path.join(self.dir, name)
        old = self.entries.get(name)
        if os.path.exists(dest):
            self._retire(name, old)
        os.rename(tmp, dest)
        self.enabled[name] = enable if old is None else (enable or self.enabled.get(name, False))
        self.save_state()
        self.rescan()
        return self.entries[name]

    def remove(self, name: str) -> None:
        old = self.entries.get(name)
        if os.path.exists(os.path.join(self.dir, name)):
            self._retire(name, old)
        self.enabled.pop(name, None)
        self.save_state()
        self.rescan()

    def _retire(self, name: str, entry: Entry | None) -> None:
        trash = os.path.join(self.dir, TRASH)
        os.makedirs(trash, exist_ok=True)
        aside = os.path.join(trash, f"{name}.{uuid.uuid4().hex[:8]}")
        os.rename(os.path.join(self.dir, name), aside)
        if entry is not None:
            entry.loc[0] = aside
        self._retired.append((entry, aside))

    def reap(self) -> None:
        """Delete retired directories no running call uses."""
        keep = []
        for entry, path in self._retired:
            if entry is not None and entry.users:
                keep.append((entry, path))
                continue
            shutil.rmtree(path, ignore_errors=True)
        self._retired = keep

    def clean_trash(self) -> None:
        shutil.rmtree(os.path.join(self.dir, TRASH), ignore_errors=True)
        try:
            for n in os.listdir(self.dir):
                if n.startswith(".") and n.endswith(".new"):
                    shutil.rmtree(os.path.join(self.dir, n), ignore_errors=True)
        except FileNotFoundError:
            pass
