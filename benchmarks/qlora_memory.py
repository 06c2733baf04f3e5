"""Measured GPU memory of a LoRA training step on a quantized frozen base (NF4 / int8, bitsandbytes).

Run on a CUDA machine: ``python -m benchmarks.qlora_memory --out DIR``. As ``benchmarks/flow_memory.py``
(whole real-size transformer, random weights, the family's objective and ``predict``, cached-embedding
shapes, 1024 px, batch 1, gradient checkpointing), with the frozen Linear layers quantized by Studio's own
``trainers.quantize.quantize_module`` after the LoRA is added. Each row also gives the memory plan's
prediction for the same configuration (``studio.memory_plan.predict``, without the context allowance)
and their ratio. ``--tiny-trainer`` also runs Studio's trainer on tiny-flux with base_quantization nf4/int8
on the GPU (Accelerate bf16, placement, the saved adapter).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

from benchmarks.flow_arch import LORA_TARGETS, transformer
from benchmarks.flow_memory import RESOLUTION, timed_steps

CONFIGS = [("flux-dev", "nf4"), ("flux-dev", "int8"), ("sd35-medium", "nf4")]
HUB = {"flux-dev": "black-forest-labs/FLUX.1-dev", "sd35-medium": "stabilityai/stable-diffusion-3.5-medium",
       "sd35-large": "stabilityai/stable-diffusion-3.5-large"}


def predicted(model: str, kind: str) -> float:
    from studio.config import load_config
    from studio.memory_plan import predict

    config = load_config(None, {"method": "lora", "base": HUB[model], "resolution": RESOLUTION, "lora_rank": 16,
                                "lora_alpha": 16, "mixed_precision": "bf16", "optimizer": "adamw",
                                "gradient_checkpointing": True, "base_quantization": kind})
    parts, _ = predict(config)
    return sum(v for k, v in parts.items() if k != "CUDA context and slack")


def measure(model: str, kind: str, device: torch.device, steps: int = 3) -> dict:
    from peft import LoraConfig

    from trainers.quantize import quantize_module

    gib = 2**30
    denoiser = transformer(model, device=device, dtype=torch.bfloat16)
    denoiser.requires_grad_(False)
    denoiser.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=list(LORA_TARGETS), init_lora_weights="gaussian"))
    started = time.perf_counter()
    layers = quantize_module(denoiser, kind, compute_dtype=torch.bfloat16, device=device)
    quantize_s = time.perf_counter() - started
    for buffer_owner in denoiser.modules():  # as the trainer's cast: buffers in the frozen dtype
        for name, buffer in list(buffer_owner.named_buffers(recurse=False)):
            if buffer.is_floating_point():
                setattr(buffer_owner, name, buffer.to(torch.bfloat16))
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    denoiser.enable_gradient_checkpointing()
    denoiser.train()
    params = [p for p in denoiser.parameters() if p.requires_grad]
    for p in params:  # as the trainer: trainable tensors in fp32 (peft made them in the layer's bf16)
        p.data = p.data.float()
    weights = torch.cuda.memory_allocated(device)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    times, losses, peak_bytes = timed_steps(model, denoiser, optimizer, device, steps)
    peak = peak_bytes / gib
    try:
        plan = predicted(model, kind)
    except Exception:  # noqa: BLE001 - the measurement stands without it
        plan = float("nan")
    row = {"model": model, "quantization": kind, "quantized_layers": layers, "quantize_s": quantize_s,
           "weights_gib": weights / gib, "peak_gib": peak, "plan_gib": plan, "peak_over_plan": peak / plan,
           "step_s": min(times[1:]), "losses": losses, "trainable_params": sum(p.numel() for p in params)}
    del denoiser, optimizer, params
    gc.collect()
    torch.cuda.empty_cache()
    return row


def tiny_trainer(out: Path) -> list[dict]:
    """Studio's trainer on tiny-flux, LoRA on a quantized base, on the GPU."""
    import os
    import tempfile

    os.environ.setdefault("STUDIO_DATA_DIR", tempfile.mkdtemp())
    from studio.config import load_config
    from studio.subjects import prepare_subject
    from trainers import METHODS
    from trainers.base import Trainer, prepare_run_dir

    samples = sorted(Path("datasets").rglob("*.png"))[:4] or sorted(Path("datasets").rglob("*.jpg"))[:4]
    subject = Path(tempfile.mkdtemp()) / "toy"
    prepare_subject(samples, "sks", "toy", subject, resolution=64)
    rows = []
    for kind in ("nf4", "int8"):
        config = load_config("tiny-flux-lora", {"steps": 20, "sample_every": 0, "checkpoint_every": 0, "validation": False,
                                                 "mixed_precision": "bf16", "train_text_encoder": False,
                                                 "base_quantization": kind, "resolution": 64})
        run = Path(tempfile.mkdtemp()) / kind
        prepare_run_dir(config, subject, run)  # the trainer itself (trainers.train also checks the package set)
        trainer = Trainer(METHODS["lora"], config, run)
        result = trainer.run()
        lora = [p for n, p in trainer.components["transformer"].named_parameters() if "lora_" in n]
        rows.append({"kind": kind, "artifact": result["artifact"], "device": str(trainer.device),
                     "quantized_layers": getattr(trainer, "quantized_layers", 0),
                     "lora_dtypes": sorted({str(p.dtype) for p in lora}),
                     "files": sorted(p.name for p in (run / result["artifact"]).iterdir())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(Path(__file__).with_name("results")))
    parser.add_argument("--only", default="")
    parser.add_argument("--tiny-trainer", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.backends.cuda.enable_cudnn_sdp(False)  # as flow_memory.py
    import bitsandbytes

    machine = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "bitsandbytes": bitsandbytes.__version__}
    print(json.dumps(machine), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.tiny_trainer:
        try:
            rows.append({"tiny_trainer": tiny_trainer(out)})
        except Exception as error:  # noqa: BLE001 - recorded, the measurements still run
            rows.append({"tiny_trainer_error": repr(error)[:500]})
        print(json.dumps(rows[-1]), flush=True)
    for model, kind in CONFIGS:
        if args.only and args.only not in f"{model}-{kind}":
            continue
        try:
            row = measure(model, kind, device)
        except Exception as error:  # noqa: BLE001
            row = {"model": model, "quantization": kind, "error": repr(error)[:500]}
            gc.collect()
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "qlora_memory.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
