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
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time
from pathlib import Path

import torch

from benchmarks.flow_arch import LORA_TARGETS, transformer
from benchmarks.flow_memory import family_of, scheduler_config

CONFIGS = [  # (model, base quantization, blocks swapped)
    ("flux-dev", "nf4", 0), ("flux-dev", "nf4", 38), ("flux-dev", "nf4", 48),
    ("flux-dev", "fp8", 0), ("flux-dev", "fp8", 38), ("flux-dev", "none", 48),
    ("sd35-medium", "fp8", 0), ("sd35-medium", "nf4", 12),
]
HUB = {"flux-dev": "black-forest-labs/FLUX.1-dev", "sd35-medium": "stabilityai/stable-diffusion-3.5-medium"}
GIB = 2**30


def predicted(model: str, kind: str, swap: int, resolution: int) -> float:
    from studio.config import load_config
    from studio.memory_plan import predict

    config = load_config(None, {"method": "lora", "base": HUB[model], "resolution": resolution, "lora_rank": 16,
                                "lora_alpha": 16, "mixed_precision": "bf16", "optimizer": "adamw",
                                "gradient_checkpointing": True, "base_quantization": kind, "blocks_to_swap": swap})
    parts, _ = predict(config)
    return sum(v for k, v in parts.items() if k != "CUDA context and slack")


def _conditioning(model: str, denoiser, device, tokens: int):
    from studio.families.base import PromptEmbedding

    config = denoiser.config
    return PromptEmbedding(torch.randn(1, tokens, config.joint_attention_dim, device=device, dtype=torch.bfloat16),
                           torch.randn(1, config.pooled_projection_dim, device=device, dtype=torch.bfloat16))


def _steps(model: str, denoiser, optimizer, device: torch.device, resolution: int, steps: int, tokens: int):
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
            if step == 1:
                torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        t = objective.sample_timesteps(1, generator, device, image_tokens=family.image_tokens(*latents.shape[-2:]))
        noisy, target = objective.noised(latents, torch.randn_like(latents), t)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            prediction = family.predict(denoiser, noisy.to(denoiser.dtype), t, embedding.to(dtype=denoiser.dtype), resolution)
        loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        losses.append(loss.item())
    return times, losses, torch.cuda.max_memory_allocated(device) if cuda else 0


def measure(model: str, kind: str, swap: int, device: torch.device, *, smoke: bool = False, steps: int = 3) -> dict:
    from peft import LoraConfig

    from trainers.block_swap import BlockSwapper
    from trainers.quantize import quantize_module

    torch.manual_seed(0)  # the same weights, LoRA and noise for every row of a model: swapped rows compare to unswapped
    if smoke:
        from studio.models import load_base

        denoiser = load_base("tiny-flux").pipeline.transformer.to(torch.bfloat16)
        resolution, tokens = 64, 8
    else:
        denoiser = transformer(model, device=device, dtype=torch.bfloat16)
        resolution, tokens = 1024, 512 if model.startswith("flux") else 333
    denoiser.requires_grad_(False)
    denoiser.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=list(LORA_TARGETS), init_lora_weights="gaussian"))
    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    layers = quantize_module(denoiser, kind, compute_dtype=compute, device=device) if kind != "none" else 0
    for owner in denoiser.modules():  # as the trainer's cast: floating buffers in the frozen dtype (fp8 keeps its own)
        for name, buffer in list(owner.named_buffers(recurse=False)):
            if buffer.is_floating_point() and buffer.dtype == torch.float32 and name != "scale":
                setattr(owner, name, buffer.to(torch.bfloat16))
    params = [p for p in denoiser.parameters() if p.requires_grad]
    for p in params:  # trainable tensors in fp32, as the trainer
        p.data = p.data.float()
    family = family_of(model)
    swapper = None
    if swap:
        blocks = family.swappable_blocks(denoiser)
        swapper = BlockSwapper(blocks[len(blocks) - min(swap, len(blocks)):], device)
    denoiser.enable_gradient_checkpointing()
    denoiser.train()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    times, losses, peak = _steps(model, denoiser, optimizer, device, resolution, steps, tokens)
    try:  # (the smoke run's tiny model has no plan of its own)
        plan = float("nan") if smoke else predicted(model, kind, swap, resolution)
    except Exception:  # noqa: BLE001 - the measurement stands without it
        plan = float("nan")
    row = {"model": model, "quantization": kind, "blocks_to_swap": swap, "quantized_layers": layers,
           "parked_gib": swapper.swapped_bytes() / GIB if swapper else 0.0, "weights_gib": weights / GIB,
           "peak_gib": peak / GIB, "plan_gib": plan, "peak_over_plan": (peak / GIB) / plan if peak and not math.isnan(plan) else None,
           "step_s": min(times[1:]), "losses": losses, "trainable_params": sum(p.numel() for p in params)}
    if swapper is not None:
        swapper.remove()
    del denoiser, optimizer, params, swapper
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(Path(__file__).with_name("results")))
    parser.add_argument("--only", default="", help="run the rows whose name (e.g. flux-dev-nf4-swap48) contains this")
    parser.add_argument("--smoke", action="store_true", help="tiny-flux on the CPU: checks the code runs")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)  # as flow_memory.py
    machine = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)", "torch": torch.__version__}
    print(json.dumps(machine), flush=True)
    configs = [("flux-dev", "nf4", 0), ("flux-dev", "nf4", 1), ("flux-dev", "fp8", 2)] if args.smoke else CONFIGS
    rows = []
    for model, kind, swap in configs:
        name = f"{model}-{kind}-swap{swap}"
        if args.only and args.only not in name:
            continue
        try:
            row = measure(model, kind, swap, device, smoke=args.smoke)
        except Exception as error:  # noqa: BLE001 - recorded; the other rows still run
            row = {"model": model, "quantization": kind, "blocks_to_swap": swap, "error": repr(error)[:500]}
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    for row in rows:  # block swapping must not change the step: its losses beside the unswapped row's
        plain = next((r for r in rows if r.get("losses") and r["model"] == row["model"]
                      and r["quantization"] == row["quantization"] and r["blocks_to_swap"] == 0), None)
        if row.get("losses") and row["blocks_to_swap"] and plain is not None:
            row["loss_vs_unswapped"] = max(abs(a - b) / abs(b) for a, b in zip(row["losses"], plain["losses"], strict=True))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "lowvram_memory_smoke" if args.smoke else "lowvram_memory"
    (out / f"{stem}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
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
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
