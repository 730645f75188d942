"""Hardware detection, once at start: a Jetson (L4T release and model), an
NVIDIA discrete GPU through NVML (pynvml from nvidia-ml-py), or neither.
The result, with the reason when nothing was found, is in system.status."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .errors import SourceError
from .sources import nvml

# L4T release → JetPack, from NVIDIA's release table: exact releases first
# (a point release can be a different JetPack), then major.minor.
JETPACK_BY_L4T_EXACT = {
    "28.2.1": "3.3", "32.2.1": "4.2.2", "32.4.3": "4.4", "32.4.4": "4.4.1", "32.5.1": "4.5.1",
    "32.6.1": "4.6", "32.7.1": "4.6.1", "32.7.2": "4.6.2", "32.7.3": "4.6.3", "32.7.4": "4.6.4",
    "32.7.5": "4.6.5", "32.7.6": "4.6.6", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1",
}
JETPACK_BY_L4T = {
    "24.2": "2.3", "28.1": "3.1", "28.2": "3.2", "28.3": "3.3", "32.1": "4.2", "32.2": "4.2.1",
    "32.3": "4.3", "32.4": "4.4", "32.5": "4.5", "32.6": "4.6", "32.7": "4.6.x",
    "34.1": "5.0", "35.1": "5.0.2", "35.2": "5.1", "35.3": "5.1.1", "35.4": "5.1.2",
    "35.5": "5.1.3", "35.6": "5.1.4", "36.2": "6.0 DP", "36.3": "6.0", "36.4": "6.1/6.2",
    "38.2": "7.0", "38.4": "7.1",
}
DT_MODEL = ("proc/device-tree/model", "sys/firmware/devicetree/base/model")


def jetpack_of(l4t: str | None) -> str | None:
    if not l4t:
        return None
    parts = l4t.split(".")
    full = ".".join(parts + ["0"] * (3 - len(parts))) if len(parts) < 3 else l4t
    return JETPACK_BY_L4T_EXACT.get(full) or JETPACK_BY_L4T.get(".".join(parts[:2]))


@dataclass
class Hardware:
    kind: str = "none"                 # jetson | nvml | none
    jetson_model: str | None = None
    l4t_release: str | None = None
    jetpack: str | None = None
    gpus: list = field(default_factory=list)
    note: str | None = None

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "gpus": list(self.gpus)}
        for k in ("jetson_model", "l4t_release", "jetpack", "note"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


def parse_nv_tegra_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.3, ...' → '36.4.3'."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "replace").rstrip("\x00\n")
    except OSError:
        return None


def _dt_model(root: str) -> str | None:
    for rel in DT_MODEL:
        v = _read(os.path.join(root, rel))
        if v:
            return v
    return None


def detect(root: str = "/", use_nvml: bool = True) -> Hardware:
    """Once at start.  `root` is "/" except in tests (a fake tree)."""
    notes = []
    rel = _read(os.path.join(root, "etc/nv_tegra_release"))
    model = _dt_model(root)
    if rel is not None:
        l4t = parse_nv_tegra_release(rel)
        hw = Hardware(kind="jetson", jetson_model=model, l4t_release=l4t, jetpack=jetpack_of(l4t))
        if l4t is None:
            hw.note = f"unrecognised /etc/nv_tegra_release: {rel.splitlines()[0][:80] if rel else '(empty)'}"
        return hw
    if model is not None and "jetson" in model.lower():
        # e.g. a container: the host's device tree, but not its /etc
        return Hardware(kind="jetson", jetson_model=model,
                        note="no /etc/nv_tegra_release: L4T/JetPack release unknown")
    notes.append("no /etc/nv_tegra_release (not a Jetson)")
    if use_nvml:
        try:
            names = nvml.gpu_names()
            return Hardware(kind="nvml", gpus=names)
        except SourceError as exc:
            notes.append(str(exc))
    return Hardware(kind="none", note="; ".join(notes))
