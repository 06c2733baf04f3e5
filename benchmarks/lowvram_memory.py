"""Measured GPU memory and step time of LoRA on a quantized base with block swapping and fp8 storage.

One command on a CUDA machine: ``python -m benchmarks.lowvram_memory --out DIR`` (about 5 minutes on an
H200; ``--only flux-dev-nf4-swap48`` runs one row). As ``benchmarks/qlora_memory.py``: the whole real-size
transformer with random weights, LoRA r=16 on the attention projections (fp32), gradient checkpointing,
AdamW, 1024 px, batch 1, cached-embedding shapes, the family's objective and ``predict``. The frozen
Linear layers are quantized by Studio's ``trainers.quantize.quantize_module`` (nf4, fp8) and the last N
transformer blocks handed to Studio's ``trainers.block_swap.BlockSwapper``, as a training run does.

Each row: the peak allocated from the second step on (the allocator settled, optimizer state made), the
memory plan's prediction for the same settings (``studio.memory_plan.predict`` without the context
allowance) and their ratio, the bytes parked on the CPU, the step time, and for a swapped row the largest
relative difference of its losses from the same model's unswapped row (same seed: swapping must not
change the step), so the plan's block-swap and fp8 figures (predicted today, docs/performance.md) can be
replaced by measured ones and the CUDA-stream path is checked on real sizes.
``--smoke`` runs the same code on tiny-flux on the CPU (no memory figures): a check that it runs.

``--emulate`` measures the same rows on a machine without a GPU (``benchmarks/device_emulation.py``): the
allocated bytes a CUDA device would hold, counted tensor by tensor on the CPU under dry compute and CUDA's
autocast rule for norms, with swapped blocks parked on the meta device and the quantized layers built one
block at a time (whole FLUX.1-dev runs in this machine's 24 GB). No step times or losses there (dry compute
computes no values). Its ``h200-era`` rows rebuild the layers as the H200 run had them (bitsandbytes answering in
its input's dtype) to check the emulation against that run's measured peaks. Results:
``results/lowvram_memory_emulated.{json,md}``: 1-2 minutes per SD3.5 medium row and 6-9 per FLUX.1-dev row on 2
cores. Run the FLUX.1-dev rows one per process (``--only NAME --out DIR``, then merge): one process running them
all keeps freed heap and ran out of 24 GB at the fp8 row. The int8 rows run out of 24 GB even alone (not measured).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from benchmarks.flow_arch import LORA_TARGETS, transformer
from benchmarks.flow_memory import family_of, scheduler_config

CONFIGS = [  # (model, base quantization, blocks swapped)
    ("flux-dev", "nf4", 0), ("flux-dev", "nf4", 38), ("flux-dev", "nf4", 48),
    ("flux-dev", "fp8", 0), ("flux-dev", "fp8", 38), ("flux-dev", "none", 48),
    ("sd35-medium", "fp8", 0), ("sd35-medium", "nf4", 12),
]
# (model, base quantization, blocks swapped, variant): "h200-era" as the H200's qlora_memory run (measured there),
# "offload" with offload_activations (trainers/activation_offload.py)
EMULATED_CONFIGS = [  # in order of what they settle (a cut-short run keeps the first)
    ("sd35-medium", "none", 0, ""), ("sd35-medium", "nf4", 0, "h200-era"), ("sd35-medium", "nf4", 0, ""),
    ("sd35-medium", "fp8", 0, ""), ("sd35-medium", "nf4", 12, ""), ("sd35-medium", "none", 0, "offload"),
    ("sd35-medium", "nf4", 0, "offload"),
    ("flux-dev", "nf4", 0, "h200-era"), ("flux-dev", "nf4", 0, ""), ("flux-dev", "nf4", 0, "offload"),
    ("flux-dev", "nf4", 38, ""), ("flux-dev", "fp8", 0, ""), ("flux-dev", "nf4", 38, "offload"),
    ("flux-dev", "none", 48, ""), ("flux-dev", "int8", 0, ""), ("sd35-large", "nf4", 0, ""),
    ("flux-dev", "nf4", 48, ""), ("sd35-large", "int8", 0, ""), ("flux-dev", "fp8", 38, ""),
    ("flux-dev", "none", 48, "offload"),
]
# What the H200 measured for the same configuration, to check the emulation: flux-dev NF4 (qlora_memory.json);
# SD3.5 medium bf16 (flow_memory.json: 5.889, less the 0.422 GiB of its positional table that run kept in fp32 where
# these rows, as the trainer, cast it to bf16). SD3.5 medium NF4 (qlora_memory.json: 3.666) is left out: its weights
# measured 2.43 GiB there, 0.9 more than its shapes give (1.51) and than here, unexplained without a GPU.
H200_PEAK_GIB = {("sd35-medium", "none", 0, ""): 5.889 - 0.422, ("flux-dev", "nf4", 0, "h200-era"): 10.483}
HUB = {"flux-dev": "black-forest-labs/FLUX.1-dev", "sd35-medium": "stabilityai/stable-diffusion-3.5-medium",
       "sd35-large": "stabilityai/stable-diffusion-3.5-large"}
GIB = 2**30


class _CudaMeter:
    """The CUDA allocator's counters, as DeviceBytes offers them."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @property
    def current(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    @property
    def peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)


def predicted(model: str, kind: str, swap: int, resolution: int, offload: bool = False) -> float:
    from studio.config import load_config
    from studio.memory_plan import predict

    config = load_config(None, {"method": "lora", "base": HUB[model], "resolution": resolution, "lora_rank": 16,
                                "lora_alpha": 16, "mixed_precision": "bf16", "optimizer": "adamw",
                                "gradient_checkpointing": True, "base_quantization": kind, "blocks_to_swap": swap,
                                "offload_activations": offload})
    parts, _ = predict(config)
    return sum(v for k, v in parts.items() if k != "CUDA context and slack")


def _conditioning(model: str, denoiser, device, tokens: int):
    from studio.families.base import PromptEmbedding

    config = denoiser.config
    return PromptEmbedding(torch.randn(1, tokens, config.joint_attention_dim, device=device, dtype=torch.bfloat16),
                           torch.randn(1, config.pooled_projection_dim, device=device, dtype=torch.bfloat16))


def _steps(model: str, denoiser, optimizer, device: torch.device, resolution: int, steps: int, tokens: int,
           meter=None, autocast: bool = False):
    """Training steps as the trainer's: (seconds per step, losses, peak allocated bytes from the second step)."""
    family = family_of(model)
    objective = family.objective(scheduler_config(model))
    cuda = device.type == "cuda"
    latents = torch.randn(1, denoiser.config.in_channels // (4 if model.startswith("flux") else 1),
                          resolution // 8, resolution // 8, device=device)
    embedding = _conditioning(model, denoiser, device, tokens)
    generator = torch.Generator().manual_seed(0)
    times, losses = [], []
    for step in range(steps):
        if cuda:
            torch.cuda.synchronize()
        if step == 1 and meter is not None:
            meter.reset_peak()
        started = time.perf_counter()
        t = objective.sample_timesteps(1, generator, device, image_tokens=family.image_tokens(*latents.shape[-2:]))
        noisy, target = objective.noised(latents, torch.randn_like(latents), t)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            prediction = family.predict(denoiser, noisy.to(denoiser.dtype), t, embedding.to(dtype=denoiser.dtype), resolution)
        loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        losses.append(loss.item())
    return times, losses, meter.peak if meter is not None else 0


def _cast_like_the_trainer(denoiser: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Floating buffers in the frozen dtype (fp8 keeps its own), trainable tensors in fp32; returns the trainable ones."""
    for owner in denoiser.modules():
        for name, buffer in list(owner.named_buffers(recurse=False)):
            if buffer.is_floating_point() and buffer.dtype == torch.float32 and name != "scale":
                setattr(owner, name, buffer.to(torch.bfloat16))
    params = [p for p in denoiser.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


def _lora(denoiser: torch.nn.Module) -> None:
    from peft import LoraConfig

    denoiser.requires_grad_(False)
    denoiser.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=list(LORA_TARGETS), init_lora_weights="gaussian"))


def _built(model: str, kind: str, swap: int, device: torch.device, smoke: bool):
    """(denoiser, trainable parameters, swapper) on ``device``: quantized, then the last ``swap`` blocks parked."""
    from trainers.block_swap import BlockSwapper
    from trainers.quantize import quantize_module

    if smoke:
        from studio.models import load_base

        denoiser = load_base("tiny-flux").pipeline.transformer.to(torch.bfloat16)
    else:
        denoiser = transformer(model, device=device, dtype=torch.bfloat16)
    _lora(denoiser)
    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    if kind != "none":
        quantize_module(denoiser, kind, compute_dtype=compute, device=device)
    params = _cast_like_the_trainer(denoiser)
    swapper = None
    if swap:
        blocks = family_of(model).swappable_blocks(denoiser)
        swapper = BlockSwapper(blocks[len(blocks) - min(swap, len(blocks)):], device)
    return denoiser, params, swapper


def _built_emulated(model: str, kind: str, swap: int):
    """As :func:`_built` for the emulated device: built on the meta device and given memory one unit (a block, or
    the rest) at a time, each quantized before the next, so the bf16 model never exists in RAM at once; the
    swapped blocks are parked on the meta device (as the trainer, each quantized just before it is parked)."""
    from benchmarks.device_emulation import EmulatedSwapper, materialize
    from trainers.block_swap import detached
    from trainers.quantize import quantize_module

    cpu = torch.device("cpu")
    denoiser = transformer(model, device="meta", dtype=torch.bfloat16)
    _lora(denoiser)
    blocks = family_of(model).swappable_blocks(denoiser)
    parked = blocks[len(blocks) - swap:] if swap else []

    def prepare(unit: torch.nn.Module) -> None:
        materialize(unit)
        if kind != "none":
            quantize_module(unit, kind, compute_dtype=torch.bfloat16, device=cpu)
        _cast_like_the_trainer(unit)

    with detached(blocks, denoiser):
        prepare(denoiser)
    for block in blocks[:len(blocks) - len(parked)]:
        prepare(block)
    swapper = EmulatedSwapper(parked, cpu, prepare=prepare) if parked else None
    return denoiser, [p for p in denoiser.parameters() if p.requires_grad], swapper


@contextmanager
def _as_on_the_h200(variant: str) -> Iterator[None]:
    """For "h200-era" rows: quantized layers answer in their input's dtype, as bitsandbytes' own did in that run."""
    from trainers.bitsandbytes_layers import AnswersInAutocastDtype

    if variant != "h200-era":
        yield
        return
    answering = AnswersInAutocastDtype.__dict__["autocast_input"]  # the staticmethod itself
    AnswersInAutocastDtype.autocast_input = staticmethod(lambda x: x)
    try:
        yield
    finally:
        AnswersInAutocastDtype.autocast_input = answering


def _offloading(variant: str, device: torch.device, emulate: bool):
    """The checkpointing function of an "offload" row (None: torch's own)."""
    if variant != "offload":
        return None
    from benchmarks.device_emulation import EmulatedOffload
    from trainers.activation_offload import ActivationOffload

    return (EmulatedOffload if emulate else ActivationOffload)(device).checkpoint


def _quantized_layers(denoiser: torch.nn.Module) -> int:
    from trainers.bitsandbytes_layers import AnswersInAutocastDtype
    from trainers.fp8 import Float8Linear

    return sum(isinstance(m, AnswersInAutocastDtype | Float8Linear) for m in denoiser.modules())


def measure(model: str, kind: str, swap: int, device: torch.device, *, smoke: bool = False, emulate: bool = False,
            variant: str = "", steps: int = 3) -> dict:
    from benchmarks.device_emulation import DeviceBytes
    from benchmarks.dry import DryCompute

    torch.manual_seed(0)  # the same weights, LoRA and noise for every row of a model: swapped rows compare to unswapped
    resolution, tokens = (64, 8) if smoke else (1024, 512 if model.startswith("flux") else 333)
    started = time.perf_counter()
    with _as_on_the_h200(variant):
        denoiser, params, swapper = (_built_emulated(model, kind, swap) if emulate
                                     else _built(model, kind, swap, device, smoke))
        build_s = time.perf_counter() - started
        denoiser.enable_gradient_checkpointing(_offloading(variant, device, emulate))
        denoiser.train()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        hosts = list(swapper.hosts.values()) if emulate and swapper is not None else []
        meter = _CudaMeter(device) if device.type == "cuda" else DeviceBytes(host=hosts) if emulate else None
        if emulate:
            meter.add_module(denoiser)
        weights = meter.current if meter is not None else 0
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        with meter if emulate else nullcontext(), DryCompute() if emulate else nullcontext():
            times, losses, peak = _steps(model, denoiser, optimizer, device, resolution, 2 if emulate else steps, tokens,
                                         meter, autocast=device.type == "cuda" or emulate)
    try:  # (the smoke run's tiny model has no plan of its own)
        plan = float("nan") if smoke else predicted(model, kind, swap, resolution, variant == "offload")
    except Exception:  # noqa: BLE001 - the measurement stands without it
        plan = float("nan")
    row = {"model": model, "quantization": kind, "blocks_to_swap": swap, "variant": variant,
           "quantized_layers": _quantized_layers(denoiser),
           "parked_gib": swapper.swapped_bytes() / GIB if swapper else 0.0, "weights_gib": weights / GIB,
           "peak_gib": peak / GIB, "plan_gib": plan, "peak_over_plan": (peak / GIB) / plan if peak and not math.isnan(plan) else None,
           "trainable_params": sum(p.numel() for p in params)}
    if emulate:  # dry compute: no values, and CPU time says nothing of a GPU's
        row |= {"build_s": build_s, "cpu_step_s": min(times[1:]),
                "h200_peak_gib": H200_PEAK_GIB.get((model, kind, swap, variant))}
    else:
        row |= {"step_s": min(times[1:]), "losses": losses}
    if swapper is not None:
        swapper.remove()
    del denoiser, optimizer, params, swapper
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _table(machine: dict, rows: list[dict], emulate: bool) -> str:
    if emulate:
        lines = [f"## LoRA r=16 on a quantized, block-swapped base: emulated CUDA memory ({machine['gpu']}, torch "
                 f"{machine['torch']})", "",
                 "| model | base | blocks swapped | variant | weights GiB | parked on host GiB | step peak GiB | H200 measured GiB | "
                 "plan GiB | peak / plan |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['model']} | {r['quantization']} | {r['blocks_to_swap']} | {r.get('variant', '')} | "
                             f"error: {r['error'][:80]} ||||||")
                continue
            h200 = f"{r['h200_peak_gib']:.2f}" if r.get("h200_peak_gib") else "-"
            ratio = f"{r['peak_over_plan']:.2f}" if r["peak_over_plan"] else "-"
            lines.append(f"| {r['model']} | {r['quantization']} | {r['blocks_to_swap']} | {r['variant'] or '-'} | "
                         f"{r['weights_gib']:.2f} | {r['parked_gib']:.2f} | {r['peak_gib']:.2f} | {h200} | {r['plan_gib']:.2f} | "
                         f"{ratio} |")
        return "\n".join(lines) + "\n"
    lines = [f"## LoRA r=16 on a quantized, block-swapped base ({machine['gpu']}, torch {machine['torch']})", "",
             "| model | base | blocks swapped | parked on CPU GiB | step peak GiB | plan GiB | peak / plan | step s | "
             "loss vs unswapped (max rel.) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['quantization']} | {r['blocks_to_swap']} | error: {r['error'][:80]} |||||")
            continue
        ratio = f"{r['peak_over_plan']:.2f}" if r["peak_over_plan"] else "-"
        same = f"{r['loss_vs_unswapped']:.1e}" if "loss_vs_unswapped" in r else "-"
        lines.append(f"| {r['model']} | {r['quantization']} | {r['blocks_to_swap']} | {r['parked_gib']:.2f} | "
                     f"{r['peak_gib']:.2f} | {r['plan_gib']:.2f} | {ratio} | {r['step_s']:.2f} | {same} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(Path(__file__).with_name("results")))
    parser.add_argument("--only", default="", help="run the rows whose name (e.g. flux-dev-nf4-swap48) contains this")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="tiny-flux on the CPU: checks the code runs")
    mode.add_argument("--emulate", action="store_true", help="no GPU: emulate a CUDA device's allocated memory on the CPU")
    mode.add_argument("--refresh", action="store_true", help="recompute the emulated results' plan figures, measuring nothing")
    args = parser.parse_args()
    if args.refresh:
        refresh(Path(args.out))
        return
    device = torch.device("cpu" if args.smoke or args.emulate else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)  # as flow_memory.py
    if args.emulate:
        from benchmarks.device_emulation import cuda_autocast_policy

        cuda_autocast_policy()
    gpu = (torch.cuda.get_device_name(device) if device.type == "cuda"
           else "CUDA emulated on the CPU" if args.emulate else "cpu (smoke)")
    machine = {"gpu": gpu, "torch": torch.__version__}
    print(json.dumps(machine), flush=True)
    if args.smoke:
        configs = [("flux-dev", "nf4", 0, ""), ("flux-dev", "nf4", 1, ""), ("flux-dev", "fp8", 2, "")]
    else:
        configs = EMULATED_CONFIGS if args.emulate else [(*c, "") for c in CONFIGS]
    stem = "lowvram_memory_smoke" if args.smoke else "lowvram_memory_emulated" if args.emulate else "lowvram_memory"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model, kind, swap, variant in configs:
        name = f"{model}-{kind}-swap{swap}" + (f"-{variant}" if variant else "")
        if args.only and args.only not in name:
            continue
        try:
            row = measure(model, kind, swap, device, smoke=args.smoke, emulate=args.emulate, variant=variant)
        except Exception as error:  # noqa: BLE001 - recorded; the other rows still run
            row = {"model": model, "quantization": kind, "blocks_to_swap": swap, "variant": variant, "error": repr(error)[:500]}
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
        _compare_losses(rows)
        (out / f"{stem}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
        (out / f"{stem}.md").write_text(_table(machine, rows, args.emulate))
    print(_table(machine, rows, args.emulate))


def refresh(out: Path) -> None:
    """Recompute the emulated rows' plan figures (and the H200 figures they are checked against) with the current
    code: measurements stay, predictions follow the plan."""
    path = out / "lowvram_memory_emulated.json"
    results = json.loads(path.read_text())
    for r in results["rows"]:
        if "error" in r:
            continue
        key = (r["model"], r["quantization"], r["blocks_to_swap"], r["variant"])
        r["plan_gib"] = predicted(r["model"], r["quantization"], r["blocks_to_swap"], 1024, r["variant"] == "offload")
        r["peak_over_plan"] = r["peak_gib"] / r["plan_gib"]
        r["h200_peak_gib"] = H200_PEAK_GIB.get(key)
    path.write_text(json.dumps(results, indent=2) + "\n")
    (out / "lowvram_memory_emulated.md").write_text(_table(results["machine"], results["rows"], True))


def _compare_losses(rows: list[dict]) -> None:
    """Block swapping must not change the step: each swapped row's losses beside the unswapped row's."""
    for row in rows:
        plain = next((r for r in rows if r.get("losses") and r["model"] == row["model"]
                      and r["quantization"] == row["quantization"] and r["blocks_to_swap"] == 0), None)
        if row.get("losses") and row["blocks_to_swap"] and plain is not None:
            row["loss_vs_unswapped"] = max(abs(a - b) / abs(b) for a, b in zip(row["losses"], plain["losses"], strict=True))


if __name__ == "__main__":
    main()
