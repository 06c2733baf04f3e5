"""``tiny-sdxl``: the Stable Diffusion XL architecture, shrunk so a training step runs in well under
a second on two CPU cores.

Every component is the real diffusers/transformers class with SDXL's layout: a three-level
UNet2DConditionModel with ``text_time`` added conditioning (pooled text embedding + six time ids),
linear attention projections and more transformer layers in deeper blocks; two text encoders
(``CLIPTextModel`` and ``CLIPTextModelWithProjection``) whose penultimate hidden states are
concatenated into the cross-attention input; both tokenizers with the real CLIP vocabulary
(``tokenizer_2`` pads with ``!`` as SDXL's does); SDXL's EulerDiscreteScheduler configuration.

The VAE is the same constructed autoencoder as tiny-sd's (:mod:`studio.models.tiny_vae`), kept in
fp32 under half precision as SDXL's is (``force_upcast``). The cross-attention key/value projections
get tiny-sd's initial gain so the text path matters.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from studio.models.builtin import BuiltinModel, register
from studio.models.tiny_sd import (
    TINY_RESOLUTION,
    TINY_VAE_SCALING,
    strengthen_cross_attention,
    tiny_text_encoder_config,
)
from studio.models.tiny_vae import tiny_autoencoder
from studio.models.tokenizer import write_clip_tokenizer

TEXT_ENCODER_DIM = 32  # stands for CLIP ViT-L's 768
TEXT_ENCODER_2_DIM = 64  # stands for OpenCLIP ViT-bigG's 1280 (its projection has the same width)
ADDITION_TIME_EMBED_DIM = 8  # SDXL: 256 per time id
TIME_ID_COUNT = 6  # original size (2), crop top-left (2), target size (2)
SDXL_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "use_karras_sigmas": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
    "sample_max_value": 1.0,
}


def tiny_sdxl_unet():
    """SDXL's UNet layout (3 levels, 2 resnets per level, attention in the two deeper levels)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32, 64),
        layers_per_block=2,
        attention_head_dim=(2, 4, 8),
        transformer_layers_per_block=(1, 1, 2),
        use_linear_projection=True,
        cross_attention_dim=TEXT_ENCODER_DIM + TEXT_ENCODER_2_DIM,
        addition_embed_type="text_time",
        addition_embed_type_num_heads=64,
        addition_time_embed_dim=ADDITION_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=TEXT_ENCODER_2_DIM + TIME_ID_COUNT * ADDITION_TIME_EMBED_DIM,
        norm_num_groups=8,
    )


def tiny_sdxl_text_encoders():
    """(CLIPTextModel, CLIPTextModelWithProjection), both with at least two layers (SDXL reads the
    penultimate one); the second uses GELU like OpenCLIP bigG."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    first = CLIPTextModel(tiny_text_encoder_config(hidden_size=TEXT_ENCODER_DIM, layers=2))
    return first, CLIPTextModelWithProjection(tiny_clip_g_config())


def tiny_clip_g_config():
    """OpenCLIP bigG's stand-in: wider, one layer more (its penultimate state is read), GELU."""
    config = tiny_text_encoder_config(hidden_size=TEXT_ENCODER_2_DIM, layers=3, projection_dim=TEXT_ENCODER_2_DIM)
    config.hidden_act = "gelu"
    return config


def build_tiny_sdxl(directory: Path) -> None:
    from diffusers import DDPMScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(20)
        unet = tiny_sdxl_unet()
        strengthen_cross_attention(unet)
        torch.manual_seed(21)
        text_encoder, text_encoder_2 = tiny_sdxl_text_encoders()
    vae = tiny_autoencoder(resolution=TINY_RESOLUTION, scaling_factor=TINY_VAE_SCALING)
    vae.register_to_config(force_upcast=True)

    scratch = directory / "_tokenizer_build"
    write_clip_tokenizer(scratch / "tokenizer")
    write_clip_tokenizer(scratch / "tokenizer_2", pad_token="!")
    scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(str(scratch / "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(scratch / "tokenizer_2")),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    shutil.rmtree(scratch)
    pipe.save_pretrained(str(directory), safe_serialization=True)
    DDPMScheduler.from_config(scheduler.config)  # the training scheduler must be derivable from it


register(
    BuiltinModel(
        name="tiny-sdxl",
        kind="pipeline",
        description="SDXL architecture (two text encoders, added time conditioning), tiny and randomly "
        "initialised (64 px): offline demos and tests.",
        version="2",
        build=build_tiny_sdxl,
        resolution=TINY_RESOLUTION,
        expectations=(
            "Built-in tiny-sdxl: a tiny model made for offline demos and tests, with random weights. Its images are "
            "colour blobs, and that is expected: it shows that training, sampling and export work, not what a real "
            "model learns. Train on a real base model (a Hub id, a local folder or a .safetensors file) for real images."
        ),
    )
)
