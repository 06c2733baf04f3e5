"""Shared benchmark plumbing: environment, memory probes, timers, subjects, result files.

Memory is read three ways, and every result says which: peak RSS of the process (Linux ``VmHWM``,
resettable through ``/proc/self/clear_refs`` so one phase can be measured on its own), the RSS
right after imports (the baseline every CPU figure contains) and, when a GPU is present,
``torch.cuda.max_memory_allocated`` (the figure that transfers to GPU budgets).
"""

from __future__ import annotations

import glob
import multiprocessing
import os
import platform
import resource
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
GB = 1e9


def setup_environment() -> Path:
    """Offline, and a shared data dir (tiny-sd is materialised there once); returns a work dir."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("STUDIO_DATA_DIR", str(Path(tempfile.gettempdir()) / "studio-bench-data"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # torch.cuda.is_available() through NVML: the parent must not initialise CUDA before forking children
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    work = Path(tempfile.gettempdir()) / "studio-bench-work"
    work.mkdir(parents=True, exist_ok=True)
    return work


# ---------------------------------------------------------------- memory
def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_gb() -> float:
    """Current resident set size."""
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024 / GB
    import psutil

    return psutil.Process().memory_info().rss / GB


def peak_rss_gb() -> float:
    """Peak RSS since the process started or since the last :func:`reset_peak_rss`."""
    kb = _status_kb("VmHWM")
    if kb is None:  # not Linux: ru_maxrss is bytes on macOS, never resettable
        scale = 1 if platform.system() == "Darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / GB
    return kb * 1024 / GB


def process_peak_rss_gb() -> float:
    """Peak RSS over the whole life of the process (not affected by resets)."""
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / GB


def trim_heap() -> None:
    """Give memory that is free but still held by glibc's malloc back to the OS, so a phase's peak RSS
    does not include what an earlier phase freed (GPU figures exclude freed memory the same way)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def fix_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """Make glibc serve every allocation above ``threshold`` with its own mapping, returned to the OS
    on free (its default raises the threshold to 32 MiB after the first large free, after which freed
    tensors stay resident as heap fragments). RSS then tracks live tensor bytes, as GPU allocator
    counters do. Costs speed (page faults per allocation); only for measuring."""
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, threshold))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def reset_peak_rss() -> bool:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0); False where unsupported.
    Call :func:`trim_heap` first."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def reset_gpu_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_gb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / GB


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------- time
@dataclass
class Clock:
    """Wall and process-CPU time. On a shared CPU, CPU time is what the ratios use: other people's
    processes stretch wall time, not the CPU time this process spends."""

    wall: float = field(default_factory=time.perf_counter)
    cpu: float = field(default_factory=time.process_time)

    def since(self, start: Clock) -> dict[str, float]:
        return {"wall_s": self.wall - start.wall, "cpu_s": self.cpu - start.cpu}


def now() -> Clock:
    sync()
    return Clock()


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return info


# ---------------------------------------------------------------- inputs
def subject(resolution: int) -> Path:
    """The sample subject prepared at ``resolution`` (prepared once, then reused).

    The sample photos are small (256–320 px); for resolutions they are too small for (SDXL's
    1024 px) they are upscaled first: memory and speed do not depend on image detail.
    """
    from PIL import Image

    from studio.subjects import prepare_subject

    data = Path(os.environ["STUDIO_DATA_DIR"])
    folder = data / f"bench-subject-{resolution}"
    if not (folder / "subject.json").exists():
        images = sorted(glob.glob(str(ROOT / "datasets" / "sample_subject" / "*.*g")))
        if resolution > 512:
            upscaled = data / f"bench-photos-{resolution}"
            upscaled.mkdir(parents=True, exist_ok=True)
            for i, path in enumerate(images):
                with Image.open(path) as image:
                    scale = resolution / min(image.size)
                    size = (round(image.width * scale), round(image.height * scale))
                    image.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(upscaled / f"{i:02d}.png")
            images = sorted(str(p) for p in upscaled.glob("*.png"))
        prepare_subject(images, "sks", "toy", folder, resolution=resolution, force=True)
    return folder


def fresh_run_dir(work: Path, name: str) -> Path:
    import shutil

    path = work / name
    if path.exists():
        shutil.rmtree(path)
    return path


# ---------------------------------------------------------------- isolation
def _watchdog(cap_gb: float, conn) -> None:
    """Abort the child before it takes more than its share of a shared machine."""
    while True:
        rss = rss_gb()
        if rss > cap_gb:
            conn.send({"error": f"RSS passed the {cap_gb:g} GB cap ({rss:.2f} GB); not measured"})
            os._exit(3)
        time.sleep(0.05)


def _child(function: Callable[..., dict], args: tuple, cap_gb: float, conn) -> None:
    threading.Thread(target=_watchdog, args=(cap_gb, conn), daemon=True).start()
    try:
        conn.send(function(*args))
    except BaseException as error:  # reported to the parent, which carries on with the next configuration
        conn.send({"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]})
    conn.close()
    os._exit(0)


def run_isolated(function: Callable[..., dict], args: tuple, *, cap_gb: float, timeout_s: float) -> dict[str, Any]:
    """``function(*args)`` in a forked child; its dict result, or ``{"error": ...}``.

    The parent has only imported libraries (no tensors, no threads, no CUDA), so each child starts
    from the same interpreter + torch + diffusers baseline and its peak RSS is its own.
    """
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(function, args, cap_gb, child))
    process.start()
    child.close()
    result: dict[str, Any] = {"error": f"no result within {timeout_s:.0f} s"}
    if parent.poll(timeout_s):
        try:
            result = parent.recv()
        except EOFError:
            result = {"error": f"child died (exit code {process.exitcode})"}
    process.join(10)
    if process.is_alive():
        process.kill()
        process.join()
    return result


# ---------------------------------------------------------------- output
def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """``results/NAME.json`` and ``results/NAME.md``, each written atomically."""
    from studio.atomic import write_json, write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = write_json(RESULTS / f"{name}.json", payload)
    md_path = write_text(RESULTS / f"{name}.md", markdown.rstrip() + "\n")
    return Path(json_path), Path(md_path)
