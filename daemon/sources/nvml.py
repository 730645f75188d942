"""A discrete NVIDIA GPU's memory through NVML (pynvml from nvidia-ml-py):
on a desktop/server GPU the model's weights and KV cache live there, not in
RAM, so its use joins the stress signal as its own component."""
from __future__ import annotations

from ..errors import SourceError


class NvmlReader:
    name = "nvml"

    def __init__(self):
        try:
            import pynvml
            pynvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - missing library / driver
            raise SourceError(f"NVML unavailable: {exc}") from None
        self._nvml = pynvml
        n = pynvml.nvmlDeviceGetCount()
        if n == 0:
            pynvml.nvmlShutdown()
            raise SourceError("NVML found no GPU")
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
        self.path = f"nvml:{n} GPU(s)"

    def read(self) -> tuple[int, int]:
        """(used, total) bytes of the fullest GPU."""
        best = None
        try:
            for h in self._handles:
                m = self._nvml.nvmlDeviceGetMemoryInfo(h)
                if best is None or m.used / m.total > best[0] / best[1]:
                    best = (m.used, m.total)
        except Exception as exc:  # noqa: BLE001 - NVMLError (GPU lost, driver reset)
            raise SourceError(f"NVML read failed: {exc}") from None
        return best

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
