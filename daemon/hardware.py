"""Hardware detection, once at start: a Jetson (L4T release and model), an
NVIDIA discrete GPU through NVML (pynvml from nvidia-ml-py), or neither.
The result, with the reason when nothing was found, is in system.status."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

JETPACK_BY_L4T = {
    # L4T major.minor → JetPack (NVIDIA's release table).
    "24.2": "2.3", "28.1": "3.1", "28.2": "3.2", "28.3": "3.3", "32.1": "4.2", "32.2": "4.2.1",
    "32.3": "4.3", "32.4": "4.4", "32.5": "4.5", "32.6": "4.6", "32.7": "4.6.x",
    "34.1": "5.0", "35.1": "5.0.2", "35.2": "5.1", "35.3": "5.1.1", "35.4": "5.1.2",
    "35.5": "5.1.3", "35.6": "5.1.4", "36.2": "6.0 DP", "36.3": "6.0", "36.4": "6.1/6.2",
    "38.2": "7.0", "38.4": "7.1",
}


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


def detect(root: str = "/", use_nvml: bool = True) -> Hardware:
    notes = []
    rel = _read(os.path.join(root, "etc/nv_tegra_release"))
    if rel is not None:
        l4t = parse_nv_tegra_release(rel)
        model = _read(os.path.join(root, "proc/device-tree/model")) or \
            _read(os.path.join(root, "sys/firmware/devicetree/base/model"))
        jp = JETPACK_BY_L4T.get(".".join(l4t.split(".")[:2])) if l4t else None
        return Hardware(kind="jetson", jetson_model=model, l4t_release=l4t, jetpack=jp)
    notes.append("no /etc/nv_tegra_release (not a Jetson)")
    if use_nvml:
        try:
            import pynvml
            pynvml.nvmlInit()
            try:
                n = pynvml.nvmlDeviceGetCount()
                names = []
                for i in range(n):
                    name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                    names.append(name.decode() if isinstance(name, bytes) else name)
            finally:
                pynvml.nvmlShutdown()
            if names:
                return Hardware(kind="nvml", gpus=names)
            notes.append("NVML found no GPU")
        except Exception as exc:  # noqa: BLE001 - NVMLError or missing library
            notes.append(f"NVML: {exc}")
    return Hardware(kind="none", note="; ".join(notes))
