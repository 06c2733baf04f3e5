"""Where each module of a training run lives, and in which precision.

The order the trainer follows (staged placement): cast every module to its training precision where
it lies; move only the VAE and text encoders to the device and build the caches; release the ones
the step no longer needs; only then move the rest (the UNet) to the device. The device's setup peak
is then the larger of the two phases, not their sum (SDXL: 1.7 GB of encoders beside a 5.1 GB bf16 UNet).
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from contextlib import contextmanager

import torch

from studio.settings import TrainConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def frozen_dtype(config: TrainConfig) -> torch.dtype:
    """The precision frozen weights are held in: ``frozen_weights_dtype``, or the mixed-precision dtype."""
    if config.frozen_weights_dtype != "auto":
        return DTYPES[config.frozen_weights_dtype]
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision, torch.float32)


def load_dtypes(config: TrainConfig, *, frozen_denoiser: bool, cuda: bool) -> dict | None:
    """Per-component dtypes to load a base in, so a large frozen denoiser and its text encoders never sit
    in host memory in fp32 (Flux.1-dev's transformer is 48 GB in fp32, 24 GB in bf16): the denoiser and
    text encoders in the frozen dtype, everything else (the VAE) in fp32. Only for methods whose
    denoiser stays frozen, and on a GPU (class images are generated under autocast there); None keeps
    the loader's fp32, which :func:`set_dtypes_and_modes` casts afterwards as before."""
    dtype = frozen_dtype(config)
    if not (frozen_denoiser and cuda) or dtype == torch.float32:
        return None
    reduced = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
    return {name: dtype for name in reduced} | {"default": torch.float32}


def set_dtypes_and_modes(components: dict, trainable: dict, *, dtype: torch.dtype, reduced_frozen_params_ok: bool) -> None:
    """Cast each module to the precision it trains in (where it lies) and set train/eval modes.

    Frozen modules take ``dtype``, except a VAE whose config asks for fp32 (SDXL's overflows in
    fp16). Trainable tensors stay fp32; the frozen tensors beside them are reduced only where the
    method allows it (LoRA's base weights)."""
    for name, module in components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        if not any(p.requires_grad for p in module.parameters()):
            keep_fp32 = getattr(getattr(module, "config", None), "force_upcast", False)
            module.to(dtype=torch.float32 if keep_fp32 else dtype)
        elif not reduced_frozen_params_ok:
            module.to(dtype=torch.float32)
        else:
            for param in module.parameters():
                param.data = param.data.to(torch.float32 if param.requires_grad else dtype)
        module.train(name in trainable)


def move_to_device(components: dict, device: torch.device, names: Iterable[str] | None = None, *,
                   skip: Iterable[str] = ()) -> None:
    """Move the named modules (default: all) to ``device``, except those in ``skip``."""
    skipped = set(skip)
    for name in list(names) if names is not None else list(components):
        module = components.get(name)
        if isinstance(module, torch.nn.Module) and name not in skipped:
            module.to(device)


def release(components: dict, pipeline, names: Iterable[str], device: torch.device, *, keep_on_cpu: bool) -> list[str]:
    """Take the named modules out of training memory; returns those released.

    On a GPU they wait on the CPU (samples bring them back). On the CPU they are dropped from the
    pipeline altogether, unless ``keep_on_cpu`` (samples will need them): a DreamBooth save reloads them."""
    released = []
    for name in names:
        if name not in components:
            continue
        if device.type == "cuda":
            components[name].to("cpu")
        elif not keep_on_cpu:
            setattr(pipeline, name, None)
            del components[name]
        else:
            continue
        released.append(name)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return released


@contextmanager
def brought_back(components: dict, released: Iterable[str], device: torch.device):
    """Released modules back on the GPU for the duration (sampling), then off again."""
    moved = [n for n in released if n in components and device.type == "cuda"]
    for name in moved:
        components[name].to(device)
    try:
        yield
    finally:
        for name in moved:
            components[name].to("cpu")


@contextmanager
def generating_on_device(pipeline, device: torch.device, autocast):
    """Generation on the accelerator with one model there at a time (diffusers' model offload): a
    base still in its loaded precision may not fit whole (all of SDXL in fp32 needs 14 GB). On a CPU
    nothing moves."""
    if device.type != "cuda":
        yield
        return
    pipeline.enable_model_cpu_offload(device=device)
    try:
        with autocast():
            yield
    finally:
        pipeline.remove_all_hooks()
        pipeline.to("cpu")
