"""Model families. ``family_for`` picks one from a pipeline's components."""

from __future__ import annotations

from typing import Any

from studio.families.base import ModelFamily, PromptEmbedding
from studio.families.sd import StableDiffusion2Family, StableDiffusionFamily


def family_for(pipeline_or_components: Any) -> ModelFamily:
    components = getattr(pipeline_or_components, "components", pipeline_or_components)
    if components.get("text_encoder_2") is not None:
        from studio.families.sdxl import StableDiffusionXLFamily

        return StableDiffusionXLFamily()
    text_encoder = components.get("text_encoder")
    if text_encoder is not None and getattr(text_encoder.config, "hidden_size", 768) == 1024:
        return StableDiffusion2Family()
    return StableDiffusionFamily()


__all__ = ["ModelFamily", "PromptEmbedding", "family_for"]
