"""DreamBooth: full fine-tune of the denoiser (UNet or transformer) (and optionally the text encoder); saves a diffusers folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trainers.method import Method


class DreamBoothMethod(Method):
    name = "dreambooth"
    artifact = "model"

    def setup(self) -> None:
        for module in self.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
        for name in self.trainable_modules():
            self.components[name].requires_grad_(True)

    def text_encoder_trains(self) -> bool:
        return self.config.train_text_encoder

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        names = [self.family.denoiser_name] + (list(self.family.text_encoder_names) if self.config.train_text_encoder else [])
        return {name: self.components[name] for name in names if self.components.get(name) is not None}

    def save_result(self, directory: Path) -> dict[str, Any]:
        """A complete diffusers pipeline folder; modules released during training are reloaded."""
        from studio.models import load_configured_base

        pipeline = self.base.pipeline
        missing = [name for name in ("vae", *self.family.text_encoder_names) if getattr(pipeline, name, None) is None]
        if missing:
            fresh = load_configured_base(self.config).pipeline
            pipeline.register_modules(**{name: getattr(fresh, name) for name in missing})
        pipeline.to(torch.float32)
        pipeline.save_pretrained(str(directory), safe_serialization=True)
        return {"files": ["model_index.json"]}
