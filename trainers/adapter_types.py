"""The peft configuration of each adapter type (LoRA, DoRA, LoKr, LoHa) a LoRA run trains.

What each type is, how a run holds it and how it exports is described once in
:data:`studio.methods.ADAPTER_TYPES`; this module only turns the settings into peft's config.
"""

from __future__ import annotations

from typing import Any

from studio.methods import adapter_type_spec
from studio.settings import TrainConfig


def adapter_config(config: TrainConfig, targets: list[str]) -> Any:
    """peft's config for ``config.adapter_type`` on ``targets`` (rank, alpha, dropout from the LoRA settings).

    LoRA and DoRA start with a Gaussian down and a zero up factor (no change at step 0); LoKr and LoHa
    use peft's own initialisation, which also starts at no change (one factor zero).
    """
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    kind = adapter_type_spec(config.adapter_type).name
    if kind in ("lora", "dora"):
        return LoraConfig(
            r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=targets, init_lora_weights="gaussian", use_dora=kind == "dora",
        )
    if kind == "lokr":
        return LoKrConfig(r=config.lora_rank, alpha=config.lora_alpha, module_dropout=config.lora_dropout,
                          target_modules=targets, decompose_factor=config.lokr_factor)
    return LoHaConfig(r=config.lora_rank, alpha=config.lora_alpha, module_dropout=config.lora_dropout,
                      target_modules=targets)
