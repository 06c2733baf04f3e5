"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, conditioning on its last hidden state."""

from __future__ import annotations

from typing import Any

import torch

from studio.families.base import ModelFamily, PromptEmbedding


class StableDiffusionFamily(ModelFamily):
    name = "sd1"
    default_resolution = 512
    text_encoder_names = ("text_encoder",)
    tokenizer_names = ("tokenizer",)
    kohya_base_model_version = "sd_v1"
    modelspec_architecture = "stable-diffusion-v1/lora"
    kohya_prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te_"}

    def encode(self, components: dict[str, Any], token_ids: list[torch.Tensor]) -> PromptEmbedding:
        (encoder,) = self.text_encoders(components)
        device = next(encoder.parameters()).device
        return PromptEmbedding(encoder(token_ids[0].to(device))[0])

    def unet_kwargs(self, embedding: PromptEmbedding, resolution: int) -> dict[str, Any]:
        return {"encoder_hidden_states": embedding.hidden}

    def pipeline_classes(self) -> tuple[type, type]:
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

        return StableDiffusionPipeline, StableDiffusionImg2ImgPipeline


class StableDiffusion2Family(StableDiffusionFamily):
    name = "sd2"
    default_resolution = 768
    kohya_base_model_version = "sd_v2"
    modelspec_architecture = "stable-diffusion-v2/lora"
