"""LoRA: low-rank adapters (peft) on the UNet's attention projections, optionally the text encoder(s)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from studio.methods import adapter_type_spec
from trainers.adapter_types import adapter_config
from trainers.method import Method


class LoRAMethod(Method):
    name = "lora"
    artifact = "adapter"
    reduced_frozen_params_ok = True

    def _lora_config(self, targets: list[str]):
        """peft's config for the run's adapter type (LoRA, DoRA, LoKr, LoHa): trainers/adapter_types.py."""
        return adapter_config(self.config, targets)

    def setup(self) -> None:
        for module in self.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
        self.components[self.family.denoiser_name].add_adapter(self._lora_config(self.config.lora_target_modules))
        if self.config.train_text_encoder:
            for name in self.text_encoder_names:
                self.components[name].add_adapter(self._lora_config(self.config.lora_text_encoder_target_modules))

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        """The text encoders a LoRA adapts: the family's (Flux: CLIP-L only, as its LoRA files hold)."""
        return tuple(n for n in self.family.lora_text_encoder_names if self.components.get(n) is not None)

    def text_encoder_trains(self) -> bool:
        return self.config.train_text_encoder

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        denoiser = self.family.denoiser_name
        modules = {denoiser: self.components[denoiser]}
        if self.config.train_text_encoder:
            modules |= {name: self.components[name] for name in self.text_encoder_names}
        return modules

    def adapter_metadata(self, targets: list[str]) -> dict[str, Any]:
        dora = {"use_dora": True} if adapter_type_spec(self.config.adapter_type).name == "dora" else {}
        return {"r": self.config.lora_rank, "lora_alpha": self.config.lora_alpha, "target_modules": targets} | dora

    def save_result(self, directory: Path) -> dict[str, Any]:
        from studio.lora_files import save_diffusers_lora
        from studio.peft_files import save_peft_adapters

        kind = adapter_type_spec(self.config.adapter_type)
        extras = {"adapter_type": kind.name, "lora_rank": self.config.lora_rank, "lora_alpha": self.config.lora_alpha,
                  "text_encoder_trained": self.config.train_text_encoder}
        if kind.run_layout == "peft":  # LoKr, LoHa: peft's own folders (diffusers' LoRA files cannot hold them)
            names = (self.family.denoiser_name, *self.text_encoder_names)
            return {"files": save_peft_adapters(self.components, names, directory, self.config.base)} | extras
        files = save_diffusers_lora(
            self.components, self.family, directory,
            unet_metadata=self.adapter_metadata(self.config.lora_target_modules),
            text_encoder_metadata=self.adapter_metadata(self.config.lora_text_encoder_target_modules)
            if self.config.train_text_encoder else None,
        )
        if kind.name == "dora":
            from studio.export.lycoris import rewrite_diffusers_dora

            rewrite_diffusers_dora(directory / files[0], self.family)
        return {"files": files} | extras
