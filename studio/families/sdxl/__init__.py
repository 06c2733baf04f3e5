"""Stable Diffusion XL: two CLIP text encoders and added (pooled text + size/crop) conditioning.

What SDXL's UNet is conditioned on, as in diffusers' ``StableDiffusionXLPipeline.encode_prompt``:
- ``encoder_hidden_states``: the *penultimate* hidden states of both encoders, concatenated on the
  feature axis (768 + 1280 = 2048 for the real model);
- ``added_cond_kwargs["text_embeds"]``: text_encoder_2's projected pooled output (``text_embeds``);
- ``added_cond_kwargs["time_ids"]``: (original height, width, crop top, left, target height, width).
  Training images are square crops at the training resolution, so this is (r, r, 0, 0, r, r) — the
  same values the pipeline uses when generating at that resolution.
"""

from __future__ import annotations

from typing import Any

import torch

from studio.families.base import ModelFamily, PromptEmbedding


def sdxl_time_ids(resolution: int | tuple[int, int], batch: int, *, dtype=None, device=None) -> torch.Tensor:
    """[batch, 6] time ids for an uncropped image of ``resolution`` pixels: a square side, or (height, width)
    for an aspect-ratio bucket (original size = target size, crop (0, 0))."""
    height, width = resolution if isinstance(resolution, tuple) else (resolution, resolution)
    row = torch.tensor([height, width, 0, 0, height, width], dtype=dtype or torch.float32, device=device)
    return row.expand(batch, -1)


class StableDiffusionXLFamily(ModelFamily):
    name = "sdxl"
    detection_order = 30
    label = "Stable Diffusion XL"
    hub_tags = ("stable-diffusion-xl", "stable-diffusion-xl-diffusers")
    supports_single_file = True
    default_resolution = 1024
    text_encoder_names = ("text_encoder", "text_encoder_2")
    tokenizer_names = ("tokenizer", "tokenizer_2")
    prompt_argument_names = ("prompt", "prompt_2")
    kohya_base_model_version = "sdxl_base_v1-0"
    modelspec_architecture = "stable-diffusion-xl-v1-base/lora"
    kohya_prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    task_pipelines = {
        "inpaint": "StableDiffusionXLInpaintPipeline", "control": "StableDiffusionXLControlNetPipeline",
        "control-img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
        "control-inpaint": "StableDiffusionXLControlNetInpaintPipeline",
        "instruct": "StableDiffusionXLInstructPix2PixPipeline",
    }
    controlnet_classes = ("ControlNetModel",)
    control_image_argument = "image"

    @classmethod
    def detect(cls, components: dict[str, Any]) -> bool:
        return components.get("unet") is not None and components.get("text_encoder_2") is not None

    @classmethod
    def detect_keys(cls, keys: list[str]) -> bool:
        return any(k.startswith("conditioner.embedders.1") for k in keys)

    def kohya_lora_name(self, component: str, path: str, unet_config: Any = None) -> str:
        """SDXL tools name UNet modules by the original SGM blocks (``lora_unet_input_blocks_4_1_…``),
        which depend on the block layout: pass the UNet's config."""
        if component != "unet":
            return super().kohya_lora_name(component, path)
        if unet_config is None:
            from studio.errors import StudioError

            raise StudioError("kohya names of an SDXL LoRA need the UNet config (its block layout).")
        from studio.families.sdxl.names import sgm_unet_name

        return self.kohya_prefixes["unet"] + sgm_unet_name(path, unet_config).replace(".", "_")

    def encode(self, components: dict[str, Any], token_ids: list[torch.Tensor]) -> PromptEmbedding:
        hidden, pooled = [], None
        for encoder, ids in zip(self.text_encoders(components), token_ids, strict=True):
            device = next(encoder.parameters()).device
            output = encoder(ids.to(device), output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
            pooled = output[0]  # the last encoder's projected pooled output (text_embeds)
        if pooled is None or pooled.ndim != 2:
            raise ValueError("SDXL's second text encoder must be a CLIPTextModelWithProjection (pooled text_embeds).")
        device = hidden[-1].device
        return PromptEmbedding(torch.cat([h.to(device) for h in hidden], dim=-1), pooled)

    def unet_kwargs(self, embedding: PromptEmbedding, resolution: int) -> dict[str, Any]:
        if embedding.pooled is None:
            raise ValueError("SDXL conditioning needs the pooled text embedding; encode prompts with the SDXL family.")
        pooled = embedding.pooled
        time_ids = sdxl_time_ids(resolution, pooled.shape[0], dtype=pooled.dtype, device=pooled.device)
        return {
            "encoder_hidden_states": embedding.hidden,
            "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids},
        }

    def single_file_state(self, pipe) -> dict[str, torch.Tensor]:
        """SDXL's original SGM layout (``studio.families.sdxl.names``)."""
        from studio.families.sdxl.names import sdxl_single_file_state

        return sdxl_single_file_state(pipe)

    def pipeline_classes(self) -> tuple[type, type]:
        from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

        return StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline


FAMILY_CLASSES: tuple[type[ModelFamily], ...] = (StableDiffusionXLFamily,)  # found by studio.families.discovery
