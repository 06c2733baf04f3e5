"""Analytic memory floors: the bytes of weights, gradients and optimizer state a mode must hold.

Activations are deliberately left out (they depend on resolution, batch and checkpointing), so
``measured / floor`` says how much a run spends beyond the unavoidable.
"""

from __future__ import annotations

import math
from typing import Any

import torch

ADAM_8BIT_BLOCK = 256  # bitsandbytes' blockwise quantisation block (one fp32 absmax per block)
ADAM_8BIT_MIN_SIZE = 4096  # bitsandbytes keeps smaller tensors' states in fp32


def optimizer_state_bytes(params: list[torch.Tensor], optimizer: str) -> int:
    """AdamW: two fp32 moments per parameter. 8-bit AdamW: two uint8 moments plus one fp32 absmax
    per 256-value block; tensors under 4096 values keep fp32 moments (bitsandbytes' rule)."""
    total = 0
    for p in params:
        n = p.numel()
        if optimizer == "adamw8bit" and n >= ADAM_8BIT_MIN_SIZE:
            total += 2 * (n + 4 * math.ceil(n / ADAM_8BIT_BLOCK))
        else:
            total += 2 * 4 * n
    return total


def held_modules(trainer) -> dict[str, torch.nn.Module]:
    """Modules the training step keeps on its device (released ones are gone or on the CPU)."""
    released = set(getattr(trainer, "released", []))
    return {name: m for name, m in trainer.components.items() if isinstance(m, torch.nn.Module) and name not in released}


def floor_of(trainer) -> dict[str, Any]:
    """The floor of a set-up :class:`trainers.base.Trainer`, in bytes, by part."""
    held = held_modules(trainer)
    weights = {name: sum(p.numel() * p.element_size() for p in m.parameters()) for name, m in held.items()}
    trainable = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    grads = sum(p.numel() * p.element_size() for p in trainable)
    state = optimizer_state_bytes(trainable, trainer.config.optimizer)
    return {
        "weights": sum(weights.values()), "weights_by_module": weights, "trainable_params": sum(p.numel() for p in trainable),
        "grads": grads, "optimizer_state": state, "total": sum(weights.values()) + grads + state,
    }


def measured_state_bytes(optimizer) -> int:
    """Bytes actually held in the optimizer's state (each storage counted once)."""
    seen: set[int] = set()
    total = 0
    inner = getattr(optimizer, "optimizer", optimizer)
    for state in inner.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                key = value.untyped_storage().data_ptr()
                if key not in seen:
                    seen.add(key)
                    total += value.untyped_storage().nbytes()
    return total


def predicted_floor(method: str, optimizer: str, unet_params: float, frozen_bytes: int = 4) -> float:
    """A quick floor from the UNet's parameter count alone (before building anything): used to skip
    configurations that cannot fit the benchmark's memory cap. Full fine-tune: fp32 weights + grads +
    moments; LoRA / TI: frozen UNet weights only (their trainable part is small)."""
    if method != "dreambooth":
        return unet_params * frozen_bytes
    moments = 2 * (1 + 4 / ADAM_8BIT_BLOCK) if optimizer == "adamw8bit" else 8
    return unet_params * (4 + 4 + moments)
