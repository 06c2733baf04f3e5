"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, conditioning on its last hidden state."""

from __future__ import annotations

from typing import Any

import torch

from studio.families.base import ModelFamily, PromptEmbedding


def _unet_family(components: dict[str, Any]) -> bool:
    return components.get("unet") is not None and components.get("text_encoder_2") is None


def _text_width(components: dict[str, Any]) -> int:
    encoder = components.get("text_encoder")
    return getattr(getattr(encoder, "config", None), "hidden_size", 768)


class StableDiffusionFamily(ModelFamily):
    name = "sd1"
    detection_order = 50
    label = "Stable Diffusion 1.x"
    default_resolution = 512
    text_encoder_names = ("text_encoder",)
    tokenizer_names = ("tokenizer",)
    kohya_base_model_version = "sd_v1"
    modelspec_architecture = "stable-diffusion-v1/lora"
    kohya_prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
    supports_single_file = True
    task_pipelines = {
        "inpaint": "StableDiffusionInpaintPipeline", "control": "StableDiffusionControlNetPipeline",
        "control-img2img": "StableDiffusionControlNetImg2ImgPipeline",
        "control-inpaint": "StableDiffusionControlNetInpaintPipeline", "instruct": "StableDiffusionInstructPix2PixPipeline",
    }
    controlnet_classes = ("ControlNetModel",)
    control_image_argument = "image"

    @classmethod
    def detect(cls, components: dict[str, Any]) -> bool:
        return _unet_family(components) and _text_width(components) != 1024

    @classmethod
    def detect_keys(cls, keys: list[str]) -> bool:
        """The original LDM layout (SD1.x and 2.x share diffusers' single-file loader)."""
        return any(k.startswith("model.diffusion_model.") for k in keys)

    def encode(self, components: dict[str, Any], token_ids: list[torch.Tensor]) -> PromptEmbedding:
        (encoder,) = self.text_encoders(components)
        device = next(encoder.parameters()).device
        return PromptEmbedding(encoder(token_ids[0].to(device))[0])

    def unet_kwargs(self, embedding: PromptEmbedding, resolution: int) -> dict[str, Any]:
        return {"encoder_hidden_states": embedding.hidden}

    def single_file_state(self, pipe) -> dict[str, torch.Tensor]:
        """SD1.x's original LDM layout (``studio.export.ldm_keys``)."""
        from studio.export.ldm_keys import clip_to_ldm, unet_to_ldm, vae_to_ldm

        state = unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)
        state |= vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)
        return state | clip_to_ldm(pipe.text_encoder.state_dict())

    def pipeline_classes(self) -> tuple[type, type]:
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

        return StableDiffusionPipeline, StableDiffusionImg2ImgPipeline


class StableDiffusion2Family(StableDiffusionFamily):
    name = "sd2"
    detection_order = 40  # before SD1.x, whose class it extends
    label = "Stable Diffusion 2.x"
    default_resolution = 768
    kohya_base_model_version = "sd_v2"
    modelspec_architecture = "stable-diffusion-v2/lora"
    supports_single_file = False  # its OpenCLIP text encoder uses another layout
    kohya_v2 = True

    def single_file_state(self, pipe) -> dict[str, torch.Tensor]:
        return ModelFamily.single_file_state(self, pipe)

    @classmethod
    def detect(cls, components: dict[str, Any]) -> bool:
        return _unet_family(components) and _text_width(components) == 1024

    @classmethod
    def detect_keys(cls, keys: list[str]) -> bool:
        return False  # read by StableDiffusionFamily's loader (the same pipeline class)


FAMILY_CLASSES: tuple[type[ModelFamily], ...] = (StableDiffusionFamily, StableDiffusion2Family)  # found by studio.families.discovery
