"""Stable Diffusion 3 / 3.5: the MMDiT transformer with CLIP-L, CLIP-G and (optional) T5, flow matching.

What the transformer is conditioned on, as in diffusers' ``StableDiffusion3Pipeline.encode_prompt``:
- ``encoder_hidden_states``: the penultimate hidden states of CLIP-L and CLIP-G concatenated on the
  feature axis, zero-padded to T5's width, followed on the sequence axis by T5's last hidden state;
  without T5 (``text_encoder_3`` left out, as diffusers allows) zeros of T5's shape stand in;
- ``pooled_projections``: both CLIP encoders' projected pooled outputs, concatenated.
Latents are not packed; the timestep is σ × 1000 as the pipeline passes it.
"""

from __future__ import annotations

from typing import Any

import torch

from studio.families.base import FusedPlace, ModelFamily, PromptEmbedding, is_instance_named
from studio.families.objective import FlowMatchingObjective, FlowSampling

T5_SEQUENCE_LENGTH = 256  # the pipeline's default max_sequence_length


class StableDiffusion3Family(ModelFamily):
    name = "sd3"
    detection_order = 20
    label = "Stable Diffusion 3.5"
    default_resolution = 1024
    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    tokenizer_names = ("tokenizer", "tokenizer_2", "tokenizer_3")
    hub_tags = ("sd3", "sd3-diffusers")
    kohya_base_model_version = "sd3"
    modelspec_architecture = "stable-diffusion-v3-medium/lora"
    fused_kohya_layout = True  # SAI's MMDiT names, qkv fused (studio.families.sd3.names)
    kohya_network_module = "networks.lora_sd3"
    supports_single_file = True  # SAI's all-in-one layout (studio.families.sd3.checkpoint)
    prompt_argument_names = ("prompt", "prompt_2", "prompt_3")
    single_file_writer = "studio.families.sd3.single_file"
    kohya_prefixes = {"transformer": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    # diffusers has no SD3 ControlNet img2img pipeline, and its ControlNet inpainting pipeline is for inpainting
    # ControlNets (the masked image is the control), not a control image plus a mask; no instruction-tuned one.
    task_pipelines = {"inpaint": "StableDiffusion3InpaintPipeline", "control": "StableDiffusion3ControlNetPipeline"}
    controlnet_classes = ("SD3ControlNetModel",)
    control_uses_global_rng = True
    swappable_block_lists = ("transformer_blocks",)  # the joint (MMDiT) blocks: 24 in 3.5 medium, 38 in large

    @classmethod
    def detect(cls, components: dict[str, Any]) -> bool:
        return is_instance_named(components.get("transformer"), "SD3Transformer2DModel")

    @classmethod
    def detect_keys(cls, keys: list[str]) -> bool:
        return any(k.startswith("model.diffusion_model.joint_blocks.") for k in keys)

    def kohya_state(self, modules: list, denoiser_config: Any) -> dict[str, torch.Tensor]:
        """kohya/ComfyUI tensors of LoRA ``modules`` in SAI's MMDiT layout."""
        from studio.families.sd3.names import kohya_sd3_state

        return kohya_sd3_state(modules, denoiser_config, self.kohya_lora_name)

    def kohya_place(self, path: str, denoiser_config: Any) -> FusedPlace:
        """SAI's MMDiT module for a diffusers transformer module (qkv fused)."""
        from studio.families.sd3.names import _sizes, place

        name, members, slot, swapped = place(path, denoiser_config)
        sizes = _sizes(members, denoiser_config)
        return FusedPlace(name, members, slot, tuple(sizes) if sizes else None, swapped)

    def single_file_state(self, pipe) -> dict[str, torch.Tensor]:
        """Every weight in SAI's all-in-one checkpoint layout (ComfyUI's *Load Checkpoint*, ``from_single_file``)."""
        from studio.families.sd3.checkpoint import single_file_state

        return single_file_state(pipe)

    def read_kohya_state(self, state: dict[str, torch.Tensor], denoiser_config: Any) -> dict[str, torch.Tensor]:
        """The transformer's per-module weight updates a kohya SD3 file holds (diffusers paths)."""
        from studio.families.sd3.names import read_kohya_sd3_state

        return read_kohya_sd3_state(state, denoiser_config)

    def present_text_encoders(self, components: dict[str, Any]) -> tuple[str, ...]:
        return tuple(name for name in self.text_encoder_names if components.get(name) is not None)

    @property
    def lora_text_encoder_names(self) -> tuple[str, ...]:
        return ("text_encoder", "text_encoder_2")  # the CLIP encoders (StableDiffusion3Pipeline.save_lora_weights)

    @property
    def clip_text_encoder_names(self) -> tuple[str, ...]:
        return ("text_encoder", "text_encoder_2")

    def text_encoders(self, components: dict[str, Any]) -> list[Any]:
        return [components[name] for name in self.present_text_encoders(components)]

    def tokenizers(self, components: dict[str, Any]) -> list[Any]:
        return [components[self.tokenizer_of(name)] for name in self.present_text_encoders(components)]

    def tokenize(self, components: dict[str, Any], prompts: list[str]) -> list[torch.Tensor]:
        """CLIP ids padded to 77; T5's to the pipeline's ``max_sequence_length`` (256), not the tokenizer's 512."""
        ids = []
        for name in self.present_text_encoders(components):
            tokenizer = components[self.tokenizer_of(name)]
            length = tokenizer.model_max_length if tokenizer is not components.get("tokenizer_3") else T5_SEQUENCE_LENGTH
            ids.append(tokenizer(self.encoder_prompts(components, name, prompts), padding="max_length", max_length=length,
                                 truncation=True, return_tensors="pt").input_ids)
        return ids

    def objective(self, scheduler_config: Any):
        """Logit-normal σ (the SD3 paper's and diffusers' SD3 scripts' choice) with the scheduler's shift (3.0)."""
        return FlowMatchingObjective(FlowSampling(density="logit_normal", shift=float(dict(scheduler_config).get("shift", 3.0))))

    def encode(self, components: dict[str, Any], token_ids: list[torch.Tensor]) -> PromptEmbedding:
        encoders = self.text_encoders(components)
        clip_hidden, pooled = [], []
        for encoder, ids in zip(encoders[:2], token_ids[:2], strict=True):
            device = next(encoder.parameters()).device
            output = encoder(ids.to(device), output_hidden_states=True)
            clip_hidden.append(output.hidden_states[-2])
            pooled.append(output[0])
        device = clip_hidden[0].device
        clip = torch.cat([h.to(device) for h in clip_hidden], dim=-1)
        transformer = components.get("transformer")
        width = transformer.config.joint_attention_dim if transformer is not None else None
        if len(encoders) > 2:
            t5 = encoders[2]
            t5_hidden = t5(token_ids[2].to(next(t5.parameters()).device))[0].to(device)
            width = t5_hidden.shape[-1]
        else:
            if width is None:
                raise ValueError("SD3 without T5 needs the transformer's joint_attention_dim to size the empty T5 part.")
            t5_hidden = torch.zeros(clip.shape[0], T5_SEQUENCE_LENGTH, width, device=device, dtype=clip.dtype)
        clip = torch.nn.functional.pad(clip, (0, width - clip.shape[-1]))
        return PromptEmbedding(torch.cat([clip, t5_hidden.to(clip.dtype)], dim=-2),
                               torch.cat([p.to(device) for p in pooled], dim=-1))

    def predict(self, denoiser, noisy, timesteps, embedding: PromptEmbedding, resolution: int) -> torch.Tensor:
        # timesteps stay fp32: in bf16, 997 would become 996 before the sinusoidal embedding
        return denoiser(hidden_states=noisy, timestep=timesteps.float(), encoder_hidden_states=embedding.hidden,
                        pooled_projections=embedding.pooled, return_dict=False)[0]

    def pipeline_classes(self) -> tuple[type, type]:
        from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline

        return StableDiffusion3Pipeline, StableDiffusion3Img2ImgPipeline


FAMILY_CLASSES: tuple[type[ModelFamily], ...] = (StableDiffusion3Family,)  # found by studio.families.discovery
