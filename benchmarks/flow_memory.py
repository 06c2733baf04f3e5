"""Measured GPU memory of one training step of Flux.1-dev and SD3.5 medium/large at 1024 px.

Run on a CUDA machine (``python -m benchmarks.flow_memory [--out DIR]``): each configuration builds the
whole real-size transformer with random weights (memory depends on shapes, not values) and runs the
trainer's own step maths: the family's objective (timestep sampling, noised input, target) and
``predict`` (packing, ids, guidance), MSE, backward, AdamW. Text embeddings are random tensors of the
shapes the text encoders produce (they are cached before training, and the encoders released).

Reported per configuration: weights resident, peak allocated during the second step (optimizer state
exists by then), the activation share (peak − weights − gradients − optimizer state) and step time.
``--tiny`` runs the same code on the tiny models' sizes on the CPU (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.flow_arch import LORA_TARGETS, MODELS, transformer

RESOLUTION = 1024
CONFIGS = [  # (model, method, gradient checkpointing)
    ("flux-dev", "lora", True), ("flux-dev", "lora", False),
    ("sd35-medium", "lora", True), ("sd35-medium", "lora", False), ("sd35-medium", "dreambooth", True),
    ("sd35-large", "lora", True), ("sd35-large", "lora", False),
]


def family_of(model: str):
    from studio.families.flux import FluxFamily
    from studio.families.sd3 import StableDiffusion3Family

    return FluxFamily() if model.startswith("flux") else StableDiffusion3Family()


def conditioning(model: str, device, dtype):
    from studio.families.base import PromptEmbedding

    if model.startswith("flux"):  # T5 (512 tokens) + CLIP-L pooled
        return PromptEmbedding(torch.randn(1, 512, 4096, device=device, dtype=dtype), torch.randn(1, 768, device=device, dtype=dtype))
    return PromptEmbedding(torch.randn(1, 77 + 256, 4096, device=device, dtype=dtype), torch.randn(1, 2048, device=device, dtype=dtype))


def scheduler_config(model: str) -> dict:
    if model.startswith("flux"):
        return {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                "max_image_seq_len": 4096, "shift": 3.0}
    return {"shift": 3.0}


def timed_steps(model: str, denoiser, optimizer, device: torch.device, steps: int) -> tuple[list[float], list[float], int]:
    """``steps`` training steps of the family's objective at RESOLUTION in bf16 autocast: (seconds per step,
    losses, peak allocated bytes from the second step on, when the allocator has settled)."""
    family = family_of(model)
    objective = family.objective(scheduler_config(model))
    latents = torch.randn(1, 16, RESOLUTION // 8, RESOLUTION // 8, device=device)
    embedding = conditioning(model, device, torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    times, losses = [], []
    for step in range(steps):
        if step == 1:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        started = time.perf_counter()
        noise = torch.randn_like(latents)
        t = objective.sample_timesteps(1, generator, device, image_tokens=family.image_tokens(*latents.shape[-2:]))
        noisy, target = objective.noised(latents, noise, t)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            prediction = family.predict(denoiser, noisy.to(torch.bfloat16), t, embedding, RESOLUTION)
        loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        losses.append(loss.item())
    return times, losses, torch.cuda.max_memory_allocated(device)


def measure(model: str, method: str, checkpointing: bool, device: torch.device, steps: int = 3) -> dict:
    from peft import LoraConfig

    gib = 2**30
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    denoiser = transformer(model, device=device, dtype=torch.float32 if method == "dreambooth" else torch.bfloat16)
    if method == "lora":
        denoiser.requires_grad_(False)
        denoiser.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=list(LORA_TARGETS), init_lora_weights="gaussian"))
    if checkpointing:
        denoiser.enable_gradient_checkpointing()
    denoiser.train()
    params = [p for p in denoiser.parameters() if p.requires_grad]
    weights = torch.cuda.memory_allocated(device)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    times, losses, peak = timed_steps(model, denoiser, optimizer, device, steps)
    trainable = sum(p.numel() for p in params)
    grads_and_state = trainable * 4 * 3  # fp32 gradient (during backward) + two AdamW moments
    row = {
        "model": model, "method": method, "gradient_checkpointing": checkpointing, "resolution": RESOLUTION,
        "batch": 1, "transformer_params": sum(p.numel() for p in denoiser.parameters()), "trainable_params": trainable,
        "weights_gib": weights / gib, "peak_gib": peak / gib, "activations_gib": (peak - weights - grads_and_state) / gib,
        "step_s": min(times[1:]), "loss": losses[-1],
    }
    del denoiser, optimizer, params
    torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(Path(__file__).with_name("results")))
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    device = torch.device("cuda")
    # torch 2.11's cuDNN attention failed on Flux's joint attention (4,608 tokens, head dim 128, bf16) with
    # an illegal memory access in backward; flash / memory-efficient attention run it.
    torch.backends.cuda.enable_cudnn_sdp(False)
    rows = []
    for model, method, checkpointing in CONFIGS:
        if args.only and args.only not in f"{model}-{method}-{'gc' if checkpointing else 'nogc'}":
            continue
        try:
            row = measure(model, method, checkpointing, device)
        except torch.OutOfMemoryError as error:
            row = {"model": model, "method": method, "gradient_checkpointing": checkpointing, "oom": str(error)[:200]}
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    machine = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__,
               "total_gib": torch.cuda.get_device_properties(device).total_memory / 2**30}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "flow_memory.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    lines = [f"## Measured GPU memory, one training step at {RESOLUTION} px, batch 1 ({machine['gpu']}, torch {machine['torch']})",
             "", "| model | method | grad. ckpt | params (B) | trainable (M) | weights GiB | step peak GiB | activations GiB | step s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "oom" in r:
            lines.append(f"| {r['model']} | {r['method']} | {'yes' if r['gradient_checkpointing'] else 'no'} | out of memory |||||| ")
            continue
        lines.append(f"| {r['model']} | {r['method']} | {'yes' if r['gradient_checkpointing'] else 'no'} | "
                     f"{r['transformer_params'] / 1e9:.2f} | {r['trainable_params'] / 1e6:.1f} | {r['weights_gib']:.1f} | "
                     f"{r['peak_gib']:.1f} | {r['activations_gib']:.1f} | {r['step_s']:.2f} |")
    (out / "flow_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    _ = MODELS
    main()
