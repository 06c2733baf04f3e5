"""The compute device as ``studio doctor`` reports it (imports torch; not part of the quick check)."""

from __future__ import annotations

import os
from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda", "mps" or "cpu"
    name: str
    memory_total_gb: float | None
    memory_free_gb: float | None
    bf16: bool
    note: str

    def line(self) -> str:
        memory = ""
        if self.memory_total_gb is not None:
            memory = f", {self.memory_total_gb:.1f} GB"
            if self.memory_free_gb is not None:
                memory += f" ({self.memory_free_gb:.1f} GB free)"
        return f"{self.kind}: {self.name}{memory}" + (f"; {self.note}" if self.note else "")


def system_memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):
        return None


def detect_device() -> DeviceInfo:
    import torch

    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        return DeviceInfo("cuda", torch.cuda.get_device_name(index), total / GIB, free / GIB,
                          torch.cuda.is_bf16_supported(), f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return DeviceInfo("mps", "Apple GPU", system_memory_gb(), None, False,
                          "shares system memory; 8-bit optimizers need CUDA")
    cores = os.cpu_count() or 1
    return DeviceInfo("cpu", f"{cores} cores", system_memory_gb(), None, True,
                      "no GPU: the built-in tiny models train here; real models need a GPU")
