"""A discrete NVIDIA GPU's memory through NVML (pynvml from nvidia-ml-py):
on a desktop/server GPU the model's weights and KV cache live there, not in
RAM, so its use joins the stress signal as its own component.

pynvml is a declared dependency; what may be missing is the driver's
libnvidia-ml.so (nvmlInit fails), which makes the source absent.  pynvml
(~3 MiB of RSS) is imported only once that library loads: a board without an
NVIDIA driver library (every Jetson, this machine) never imports it."""
from __future__ import annotations

from ..errors import SourceError

LIBRARY = "libnvidia-ml.so.1"      # what pynvml loads on Linux


def _pynvml():
    """The pynvml module, imported once the driver's library is known to load;
    SourceError (nothing imported) when it does not."""
    import ctypes
    try:
        ctypes.CDLL(LIBRARY)
    except OSError as exc:
        raise SourceError(f"NVML unavailable: NVML Shared Library Not Found ({exc})") from None
    import pynvml
    return pynvml


def _init() -> int:
    """nvmlInit and the GPU count; SourceError (NVML stays shut) when there is none."""
    pynvml = _pynvml()
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
    pynvml = _pynvml()
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
        pynvml = self._nv = _pynvml()
        try:
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise SourceError(f"NVML: {exc}") from None
        self.path = f"nvml:{n} GPU(s)"

    def read(self) -> tuple[int, int]:
        """(used, total) bytes of the fullest GPU."""
        best = None
        pynvml = self._nv
        try:
            for h in self._handles:
                m = pynvml.nvmlDeviceGetMemoryInfo(h)
                if best is None or m.used / m.total > best[0] / best[1]:
                    best = (m.used, m.total)
        except pynvml.NVMLError as exc:     # GPU lost, driver reset
            raise SourceError(f"NVML read failed: {exc}") from None
        return best

    def close(self) -> None:
        pynvml = self._nv
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
