"""A discrete NVIDIA GPU's memory through NVML (pynvml from nvidia-ml-py):
on a desktop/server GPU the model's weights and KV cache live there, not in
RAM, so its use joins the stress signal as its own component.

pynvml is a declared dependency; what may be missing is the driver's
libnvidia-ml.so (nvmlInit fails), which makes the source absent."""
from __future__ import annotations

import pynvml

from ..errors import SourceError


def _init() -> int:
    """nvmlInit and the GPU count; SourceError (NVML stays shut) when there is none."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:          # no driver / library on this machine
        raise SourceError(f"NVML unavailable: {exc}") from None
    try:
        n = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as exc:
        pynvml.nvmlShutdown()
        raise SourceError(f"NVML unavailable: {exc}") from None
    if n == 0:
        pynvml.nvmlShutdown()
        raise SourceError("NVML found no GPU")
    return n


def gpu_names() -> list[str]:
    """Names of the NVIDIA GPUs NVML sees (for hardware detection); SourceError when none."""
    n = _init()
    try:
        out = []
        for i in range(n):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            out.append(name.decode() if isinstance(name, bytes) else name)
        return out
    except pynvml.NVMLError as exc:
        raise SourceError(f"NVML: {exc}") from None
    finally:
        pynvml.nvmlShutdown()


class NvmlReader:
    name = "nvml"

    def __init__(self):
        n = _init()
        try:
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise SourceError(f"NVML: {exc}") from None
        self.path = f"nvml:{n} GPU(s)"

    def read(self) -> tuple[int, int]:
        """(used, total) bytes of the fullest GPU."""
        best = None
        try:
            for h in self._handles:
                m = pynvml.nvmlDeviceGetMemoryInfo(h)
                if best is None or m.used / m.total > best[0] / best[1]:
                    best = (m.used, m.total)
        except pynvml.NVMLError as exc:     # GPU lost, driver reset
            raise SourceError(f"NVML read failed: {exc}") from None
        return best

    def close(self) -> None:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
