"""Peak memory of real SD1.5-architecture (512 px) and SDXL-architecture (1024 px) training steps, batch 1, per mode.

Each configuration runs in its own forked process (the parent only imports libraries, so a child
starts at the interpreter + torch + diffusers baseline): build SD1.5's architecture with random
weights in memory, set up the real ``Trainer`` (caches, releases, optimizer) on it, take one
warm-up step (which materialises the optimizer state), reset the peak-RSS mark, take one measured
step. Reported beside each figure: the analytic floor (weights + grads + optimizer state) of the
mode. On a CPU the steps run in dry-compute mode (see ``benchmarks/dry.py``); on a GPU they run
for real and ``torch.cuda.max_memory_allocated`` is reported too.

    python -m benchmarks.memory                    # every configuration (about 10 min on 2 CPU cores)
    python -m benchmarks.memory --only lora-r4-gc  # one
    python -m benchmarks.memory --only sdxl-lora-r4-bf16-gc   # SDXL at 1024 px
    python -m benchmarks.memory --only lora-r4 --compute real   # check dry against real kernels
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common, floors


@dataclass(frozen=True)
class Architecture:
    """A real base architecture the benchmark builds in memory (``real_arch.<builder>``)."""

    label: str
    ref: str
    builder: str
    unet_params: int
    resolution: int
    cap_gb: float  # default RSS cap per configuration on a CPU: SDXL's components alone are 7 GB in bf16


SD15 = Architecture("SD1.5", "sd15-arch-random", "sd15_base", 859_520_964, 512, 10.0)
SDXL = Architecture("SDXL", "sdxl-arch-random", "sdxl_base", 2_567_463_684, 1024, 14.0)


@dataclass(frozen=True)
class Mode:
    name: str
    label: str
    settings: dict[str, Any] = field(default_factory=dict)
    arch: Architecture = SD15
    checkpointing: tuple[bool, ...] = (False, True)
    opt_in: tuple[bool, ...] = ()  # checkpointing settings run only when named with --only


MODES = [
    Mode("lora-r4", "LoRA r=4", {"method": "lora", "lora_rank": 4, "lora_alpha": 4}),
    Mode("lora-r16", "LoRA r=16", {"method": "lora", "lora_rank": 16, "lora_alpha": 16}),
    Mode("lora-r4-bf16", "LoRA r=4, frozen weights bf16", {"method": "lora", "lora_rank": 4, "lora_alpha": 4, "frozen_weights_dtype": "bf16"}),
    Mode("db-adamw", "DreamBooth, AdamW", {"method": "dreambooth", "optimizer": "adamw"}),
    Mode("db-8bit", "DreamBooth, 8-bit AdamW", {"method": "dreambooth", "optimizer": "adamw8bit"}),
    Mode("ti", "Textual inversion", {"method": "textual_inversion", "num_vectors": 1}),
    # Issue 20's adapter types at r=4 (opt-in: run_all keeps its budget; results/memory_adapter_types.md):
    #   python -m benchmarks.memory --name memory_adapter_types --only dora-r4 dora-r4-gc lokr-r4 lokr-r4-gc loha-r4 loha-r4-gc
    *(Mode(f"{kind}-r4", f"{label} r=4", {"method": "lora", "adapter_type": kind, "lora_rank": 4, "lora_alpha": 4},
           checkpointing=(), opt_in=(False, True)) for kind, label in (("dora", "DoRA"), ("lokr", "LoKr"), ("loha", "LoHa"))),
    # SDXL without checkpointing is opt-in: 3 more minutes would take run_all past its 15-minute budget.
    Mode("sdxl-lora-r4-bf16", "SDXL LoRA r=4, frozen weights bf16",
         {"method": "lora", "lora_rank": 4, "lora_alpha": 4, "frozen_weights_dtype": "bf16"}, SDXL, (True,), (False,)),
    Mode("sdxl-ti-bf16", "SDXL textual inversion, frozen UNet bf16",
         {"method": "textual_inversion", "num_vectors": 1, "frozen_weights_dtype": "bf16"}, SDXL, (), (True,)),
]
CONFIGS = {f"{m.name}{'-gc' if gc else ''}": (m, gc) for m in MODES for gc in (*m.checkpointing, *m.opt_in)}
DEFAULT_CONFIGS = [f"{m.name}{'-gc' if gc else ''}" for m in MODES for gc in m.checkpointing]


def _dtypes(config) -> dict[str, Any]:
    """Build each component directly in the dtype the trainer will hold it in (what loading a
    checkpoint with ``torch_dtype`` does); trainable modules are fp32."""
    import torch

    from trainers.placement import frozen_dtype

    frozen = frozen_dtype(config)
    return {
        "unet_dtype": torch.float32 if config.method == "dreambooth" else frozen,
        "vae_dtype": frozen,
        "text_encoder_dtype": frozen,  # textual inversion trains separate new rows only
    }


def build_base(arch: Architecture, config):
    from studio.models import real_arch

    return getattr(real_arch, arch.builder)(**_dtypes(config))


def measure(name: str, compute: str, resolution: int | None, allocator: str = "fixed") -> dict[str, Any]:
    """One configuration, in this (fresh) process (``resolution`` None: the architecture's own)."""
    from benchmarks.dry import DryCompute
    from studio.config import load_config
    from trainers import METHODS
    from trainers.base import Trainer, prepare_run_dir

    mode, gc = CONFIGS[name]
    resolution = resolution or mode.arch.resolution
    fixed = allocator == "fixed" and common.fix_mmap_threshold()
    work = common.setup_environment()
    baseline = common.rss_gb()
    config = load_config(None, {
        **mode.settings, "base": mode.arch.ref, "resolution": resolution, "batch_size": 1, "steps": 2,
        "gradient_checkpointing": gc, "sample_every": 0, "checkpoint_every": 0, "prior_preservation": False,
    })
    start = common.now()
    common.reset_gpu_peak()
    base = build_base(mode.arch, config)
    run_dir = common.fresh_run_dir(work, f"memory-{name}")
    prepare_run_dir(config, common.subject(resolution), run_dir)
    trainer = Trainer(METHODS[config.method], config, run_dir, base=base)
    dry = DryCompute() if compute == "dry" else None
    with dry or nullcontext():
        trainer._setup()
        setup = common.now().since(start)
        setup_peak = common.peak_rss_gb()
        gpu_setup_peak = common.gpu_peak_gb()
        floor = floors.floor_of(trainer)
        warm_start = common.now()
        trainer._optimizer_step(0)  # warm-up: allocates the optimizer state
        warmup = common.now().since(warm_start)
        common.trim_heap()
        pre_step = common.rss_gb()
        common.reset_peak_rss()
        common.reset_gpu_peak()
        step_start = common.now()
        trainer._optimizer_step(1)
        step = common.now().since(step_start)
        peak = common.peak_rss_gb()
    return {
        "config": name, "label": mode.label, "architecture": mode.arch.label, "gradient_checkpointing": gc,
        "settings": mode.settings, "compute": compute, "resolution": resolution, "allocator": "fixed mmap threshold" if fixed else "glibc default",
        "baseline_rss_gb": baseline, "setup_peak_rss_gb": setup_peak, "rss_before_step_gb": pre_step,
        "step_peak_rss_gb": peak, "step_peak_minus_baseline_gb": peak - baseline, "gpu_max_allocated_gb": common.gpu_peak_gb(),
        "gpu_setup_max_allocated_gb": gpu_setup_peak,
        "floor_gb": floor["total"] / common.GB,
        "floor_parts_gb": {k: (v / common.GB if isinstance(v, int) and k != "trainable_params" else v) for k, v in floor.items()
                           if k != "weights_by_module"},
        "held_modules": sorted(floor["weights_by_module"]), "released_modules": list(getattr(trainer, "released", [])),
        "optimizer_state_measured_gb": floors.measured_state_bytes(trainer.optimizer) / common.GB,
        "setup_s": setup, "warmup_step_s": warmup, "step_s": step, "kernels_skipped": dry.skipped if dry else 0,
    }


def _prediction(name: str, results: dict[str, dict]) -> float | None:
    """Predicted step peak RSS of ``name`` from its floor and the activations measured for the LoRA
    run with the same checkpointing (None when that run is not available)."""
    mode, gc = CONFIGS[name]
    reference = results.get("lora-r4-gc" if gc else "lora-r4")
    if not reference or "error" in reference:
        return None
    activations = reference["step_peak_minus_baseline_gb"] - reference["floor_gb"]
    if mode.arch != SD15:
        return None
    floor = _predicted_floor_gb(mode)
    return reference["baseline_rss_gb"] + floor + activations


def _predicted_floor_gb(mode: Mode) -> float:
    frozen_bytes = 2 if mode.settings.get("frozen_weights_dtype") in ("bf16", "fp16") else 4
    return floors.predicted_floor(mode.settings["method"], mode.settings.get("optimizer", "adamw"), mode.arch.unet_params,
                                  frozen_bytes) / common.GB


def table(results: list[dict[str, Any]]) -> str:
    headers = ["architecture", "configuration", "grad. ckpt", "floor GB", "step peak RSS GB", "peak − baseline GB", "(peak − baseline) / floor",
               "GPU max alloc GB", "setup peak RSS GB", "step s (wall)", "note"]
    rows = []
    for r in results:
        mode, gc = CONFIGS[r["config"]]
        if "error" in r:
            predicted = r.get("predicted_step_peak_rss_gb")
            note = r["error"] + (f"; predicted step peak ≈ {predicted:.1f} GB" if predicted else "")
            rows.append([mode.arch.label, mode.label, "yes" if gc else "no", r.get("floor_gb"), None, None, None, None, None, None, note])
            continue
        rows.append([
            mode.arch.label, mode.label, "yes" if gc else "no", r["floor_gb"], r["step_peak_rss_gb"], r["step_peak_minus_baseline_gb"],
            r["step_peak_minus_baseline_gb"] / r["floor_gb"], r["gpu_max_allocated_gb"], r["setup_peak_rss_gb"],
            r["step_s"]["wall_s"], f"{r['compute']} compute, {r['allocator']}",
        ])
    return common.markdown_table(headers, rows)


def _with_transparent_huge_pages() -> None:
    """Re-run this command with glibc's ``hugetlb`` tunable (it is read only at process start): the fixed
    mmap threshold makes every tensor its own mapping, and faulting those in 2 MiB transparent huge
    pages instead of 4 KiB pages cuts the kernel time of a dry SDXL step about 4x. RSS still counts
    exactly the touched bytes."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables or not Path("/sys/kernel/mm/transparent_hugepage/enabled").exists():
        return
    env = {**os.environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, "glibc.malloc.hugetlb=1"]))}
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.memory", *sys.argv[1:]], env)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CONFIGS),
                        help=f"configurations to run (default: all but the opt-in {sorted(set(CONFIGS) - set(DEFAULT_CONFIGS))})")
    parser.add_argument("--compute", choices=("auto", "dry", "real"), default="auto",
                        help="auto: real kernels on a GPU, dry compute on a CPU")
    parser.add_argument("--resolution", type=int, default=None,
                        help="override every architecture's own resolution (SD1.5 512 px, SDXL 1024 px)")
    parser.add_argument("--allocator", choices=("fixed", "default"), default="fixed",
                        help="fixed: glibc mmap threshold pinned at 128 KiB so RSS tracks live tensors (what GPU counters "
                             "see); default: glibc as a CPU training run has it (peaks include heap fragments)")
    parser.add_argument("--cap-gb", type=float, default=None,
                        help="abort a configuration whose RSS passes this (default: SD1.5 10 GB, SDXL 14 GB)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    parser.add_argument("--name", default="memory", help="results file name (results/NAME.json, .md)")
    args = parser.parse_args(argv)
    common.setup_environment()
    import diffusers  # noqa: F401  - imported once here, so children start at the full baseline
    import peft  # noqa: F401
    import transformers  # noqa: F401

    import trainers  # noqa: F401

    compute = args.compute
    if compute == "auto":
        compute = "real" if common.cuda_available() else "dry"
    order = [n for n in CONFIGS if n in args.only] if args.only else DEFAULT_CONFIGS
    done: dict[str, dict] = {}
    for name in sorted(order, key=lambda n: not n.startswith("lora-r4")):  # LoRA first: others are predicted from it
        mode, _ = CONFIGS[name]
        cap_gb = args.cap_gb or mode.arch.cap_gb
        floor_gb = _predicted_floor_gb(mode)
        predicted = _prediction(name, done)
        if not common.cuda_available() and (floor_gb > cap_gb or (predicted and predicted > cap_gb)):
            done[name] = {"config": name, "floor_gb": floor_gb, "predicted_step_peak_rss_gb": predicted,
                          "error": f"skipped: floor {floor_gb:.1f} GB / predicted peak above the {cap_gb:g} GB cap"}
        else:
            done[name] = {"config": name, "cap_gb": cap_gb,
                          **common.run_isolated(measure, (name, compute, args.resolution, args.allocator), cap_gb=cap_gb, timeout_s=args.timeout)}
            if "error" in done[name]:
                done[name].setdefault("floor_gb", floor_gb)
                done[name]["predicted_step_peak_rss_gb"] = predicted
        outcome = done[name].get("error") or f"step peak RSS {done[name]['step_peak_rss_gb']:.2f} GB"
        print(f"{name}: {outcome}", flush=True)
    results = [done[n] for n in order]
    payload = {"benchmark": "memory", "machine": common.machine(), "compute": compute, "resolution": args.resolution,
               "results": results}
    sizes = f"{args.resolution} px" if args.resolution else f"SD1.5 at {SD15.resolution} px, SDXL at {SDXL.resolution} px"
    markdown = (f"## Peak memory, real architectures (random weights), {sizes}, batch 1 ({compute} compute)\n\n"
                + table(results))
    common.write_results(args.name, payload, markdown)
    print(markdown)
    return payload


if __name__ == "__main__":
    _with_transparent_huge_pages()
    main()
