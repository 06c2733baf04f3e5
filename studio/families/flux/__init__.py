"""Flux.1 (dev and schnell): an MMDiT-style transformer on packed latents, trained by flow matching.

What the transformer is conditioned on, as in diffusers' ``FluxPipeline``:
- ``encoder_hidden_states``: T5's last hidden state (``text_encoder_2``), padded to the tokenizer's
  max length (the pipeline's ``max_sequence_length``: 512 for dev, what the tokenizer here says);
- ``pooled_projections``: CLIP-L's pooled output (``text_encoder``, ``pooler_output``);
- ``guidance``: Flux-dev is guidance-distilled: the guidance scale is an input, not two passes.
  Training feeds a fixed :data:`TRAINING_GUIDANCE` (3.5, the default of diffusers' Flux LoRA/DreamBooth
  scripts and kohya's flux_train_network); schnell has no guidance input and gets none;
- latents are packed into 2×2 patches ([B, C, H, W] → [B, HW/4, 4C]) with (0, row, column) position
  ids; text positions are all zero; the timestep is σ ∈ [0, 1] (the pipeline divides by 1000).

The VAE has a shift factor (latents = (z - shift) × scale); the latent cache applies it.
"""

from __future__ import annotations

from typing import Any

import torch

from studio.families.base import FusedPlace, ModelFamily, PromptEmbedding, is_instance_named
from studio.families.objective import FlowMatchingObjective, FlowSampling

TRAINING_GUIDANCE = 3.5


class FluxFamily(ModelFamily):
    name = "flux"
    detection_order = 10
    label = "Flux.1"
    default_resolution = 1024
    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder", "text_encoder_2")
    tokenizer_names = ("tokenizer", "tokenizer_2")
    hub_tags = ("flux", "flux-diffusers")
    kohya_base_model_version = "flux1"
    modelspec_architecture = "flux-1-dev/lora"
    # kohya sd-scripts' Flux LoRA names (networks/lora_flux.py): the transformer under ``lora_unet_`` in
    # BFL's block names, CLIP-L under ``lora_te1_``; T5 LoRAs (``lora_te3_``) are not trained here.
    fused_kohya_layout = True  # BFL's names, qkv and linear1 fused (studio.families.flux.names)
    kohya_network_module = "networks.lora_flux"
    single_file_writer = "studio.families.flux.single_file"  # BFL's transformer file
    prompt_argument_names = ("prompt", "prompt_2")  # CLIP-L, T5
    kohya_prefixes = {"transformer": "lora_unet_", "text_encoder": "lora_te1_"}
    # No instruction-tuned pipeline (FLUX.1 Kontext is another model). Inpainting blends on the plain model.
    task_pipelines = {"inpaint": "FluxInpaintPipeline", "control": "FluxControlNetPipeline",
                      "control-img2img": "FluxControlNetImg2ImgPipeline", "control-inpaint": "FluxControlNetInpaintPipeline"}
    controlnet_classes = ("FluxControlNetModel",)
    swappable_block_lists = ("transformer_blocks", "single_transformer_blocks")  # 19 double, then 38 single (dev)

    @classmethod
    def detect(cls, components: dict[str, Any]) -> bool:
        return is_instance_named(components.get("transformer"), "FluxTransformer2DModel")

    @classmethod
    def detect_keys(cls, keys: list[str]) -> bool:
        """BFL's original layout (``double_blocks.N.img_attn.qkv``), bare or under ``model.diffusion_model.``."""
        return any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys)

    @property
    def lora_text_encoder_names(self) -> tuple[str, ...]:
        return ("text_encoder",)  # FluxPipeline.save_lora_weights takes CLIP-L's LoRA, not T5's

    @property
    def clip_text_encoder_names(self) -> tuple[str, ...]:
        return ("text_encoder",)  # textual inversion goes into CLIP-L (as diffusers' and kohya's Flux TI do)

    def objective(self, scheduler_config: Any):
        """Logit-normal σ with Flux's resolution-dependent shift (the sampler's own schedule)."""
        config = dict(scheduler_config)
        return FlowMatchingObjective(FlowSampling(
            density="logit_normal",
            resolution_shift=bool(config.get("use_dynamic_shifting", True)),
            shift=float(config.get("shift", 1.0)),
            base_tokens=int(config.get("base_image_seq_len", 256)),
            max_tokens=int(config.get("max_image_seq_len", 4096)),
            base_shift=float(config.get("base_shift", 0.5)),
            max_shift=float(config.get("max_shift", 1.15)),
        ))

    def image_tokens(self, latent_height: int, latent_width: int) -> int:
        return (latent_height // 2) * (latent_width // 2)

    def encode(self, components: dict[str, Any], token_ids: list[torch.Tensor]) -> PromptEmbedding:
        clip, t5 = self.text_encoders(components)
        clip_device = next(clip.parameters()).device
        pooled = clip(token_ids[0].to(clip_device), output_hidden_states=False).pooler_output
        t5_device = next(t5.parameters()).device
        hidden = t5(token_ids[1].to(t5_device), output_hidden_states=False)[0]
        return PromptEmbedding(hidden, pooled.to(hidden.device))

    @staticmethod
    def pack(latents: torch.Tensor) -> torch.Tensor:
        b, c, h, w = latents.shape
        return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)

    @staticmethod
    def unpack(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, _, features = packed.shape
        c = features // 4
        return packed.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)

    @staticmethod
    def image_ids(height: int, width: int, device, dtype) -> torch.Tensor:
        """(0, row, column) for each packed latent position: [(H/2)(W/2), 3]."""
        ids = torch.zeros(height // 2, width // 2, 3)
        ids[..., 1] = torch.arange(height // 2)[:, None]
        ids[..., 2] = torch.arange(width // 2)[None, :]
        return ids.reshape(-1, 3).to(device=device, dtype=dtype)

    def predict(self, denoiser, noisy, timesteps, embedding: PromptEmbedding, resolution: int) -> torch.Tensor:
        if embedding.pooled is None:
            raise ValueError("Flux conditioning needs CLIP's pooled embedding; encode prompts with the Flux family.")
        batch, _, height, width = noisy.shape
        dtype, device = noisy.dtype, noisy.device
        config = getattr(denoiser, "config", None) or denoiser.module.config  # prepared (wrapped) modules too
        guidance = torch.full((batch,), TRAINING_GUIDANCE, device=device, dtype=torch.float32) if config.guidance_embeds else None
        packed = denoiser(
            hidden_states=self.pack(noisy),
            timestep=timesteps.float() / 1000.0,  # fp32, as diffusers' Flux scripts pass it
            guidance=guidance,
            pooled_projections=embedding.pooled,
            encoder_hidden_states=embedding.hidden,
            txt_ids=torch.zeros(embedding.hidden.shape[1], 3, device=device, dtype=dtype),
            img_ids=self.image_ids(height, width, device, dtype),
            return_dict=False,
        )[0]
        return self.unpack(packed, height, width)

    def kohya_state(self, modules: list, denoiser_config: Any) -> dict[str, torch.Tensor]:
        """kohya/ComfyUI tensors of LoRA ``modules`` in BFL's layout."""
        from studio.families.flux.names import kohya_flux_state

        return kohya_flux_state(modules, denoiser_config, self.kohya_lora_name)

    def kohya_place(self, path: str, denoiser_config: Any) -> FusedPlace:
        """BFL's module for a diffusers transformer module (qkv and linear1 fused)."""
        from studio.families.flux.names import SWAPPED, group_of, member_sizes

        group, slot = group_of(path)
        sizes = member_sizes(group, denoiser_config)
        return FusedPlace(group.name, group.members, slot, tuple(sizes) if sizes else None, path in SWAPPED)

    def read_kohya_state(self, state: dict[str, torch.Tensor], denoiser_config: Any) -> dict[str, torch.Tensor]:
        """The transformer's per-module weight updates a kohya Flux file holds (diffusers paths)."""
        from studio.families.flux.names import read_kohya_flux_state

        return read_kohya_flux_state(state, denoiser_config)

    def control_noise(self, pipe, generators: list[torch.Generator], width: int, height: int) -> torch.Tensor:
        """diffusers' Flux ControlNet pipeline samples the control image's VAE latents with the seeds' generators
        before it draws the noise, so a seed would start from other noise than in ``FluxPipeline``: the plain
        pipeline's noise (packed), drawn here from fresh generators of the same seeds."""
        dtype = (pipe.text_encoder or pipe.transformer).dtype  # what FluxPipeline draws its noise in
        latents, _ = pipe.prepare_latents(len(generators), pipe.transformer.config.in_channels // 4, height, width,
                                          dtype, pipe._execution_device, generators)
        return latents

    def pipeline_classes(self) -> tuple[type, type]:
        from diffusers import FluxImg2ImgPipeline, FluxPipeline

        return FluxPipeline, FluxImg2ImgPipeline


FAMILY_CLASSES: tuple[type[ModelFamily], ...] = (FluxFamily,)  # found by studio.families.discovery
