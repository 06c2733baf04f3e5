"""``tiny-sd3``: the Stable Diffusion 3.5 architecture, shrunk so a training step runs in well under a
second on two CPU cores.

Every component is the real diffusers/transformers class with SD3's layout: ``SD3Transformer2DModel``
(joint MMDiT blocks on 2×2 patches, with SD3.5-medium's dual-attention first layer and QK RMS-norm);
CLIP-L and CLIP-G as ``CLIPTextModelWithProjection`` (penultimate states concatenated, projected pooled
outputs concatenated) with the real CLIP vocabulary, ``tokenizer_2`` padding with ``!`` as SD3's does;
T5 (``T5EncoderModel``, the T5 tokenizer of :mod:`studio.models.t5_vocab`); SD3's
``FlowMatchEulerDiscreteScheduler`` (shift 3). The VAE is tiny-sd's constructed autoencoder with a
shift factor as SD3's VAE has.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from studio.models.builtin import BuiltinModel, random_weights_note, register
from studio.models.t5_vocab import write_t5_tokenizer
from studio.models.tiny_flux import strengthen_context_attention, tiny_t5_encoder
from studio.models.tiny_sd import TINY_RESOLUTION, TINY_VAE_SCALING, tiny_text_encoder_config
from studio.models.tiny_sdxl import TEXT_ENCODER_2_DIM, tiny_clip_g_config
from studio.models.tiny_vae import LATENT_CHANNELS, tiny_autoencoder
from studio.models.tokenizer import write_clip_tokenizer

CLIP_L_DIM = 32  # stands for 768
CLIP_G_DIM = TEXT_ENCODER_2_DIM  # stands for 1280 (tiny-sdxl's CLIP-G)
T5_DIM = 128  # stands for 4096 (joint_attention_dim; wider than CLIP-L + CLIP-G as in SD3)
TINY_VAE_SHIFT = 0.06  # SD3's VAE: 0.0609
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}


def tiny_sd3_text_encoders():
    from transformers import CLIPTextModelWithProjection

    first = CLIPTextModelWithProjection(tiny_text_encoder_config(hidden_size=CLIP_L_DIM, layers=2, projection_dim=CLIP_L_DIM))
    with torch.no_grad():  # SD3 pools CLIP-L unprojected (SAI's code, ComfyUI): its projection is the identity
        first.text_projection.weight.copy_(torch.eye(CLIP_L_DIM))
    return first, CLIPTextModelWithProjection(tiny_clip_g_config())


def tiny_sd3_transformer():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=TINY_RESOLUTION // 8, patch_size=2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        num_layers=2, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=T5_DIM,
        caption_projection_dim=16, pooled_projection_dim=CLIP_L_DIM + CLIP_G_DIM, pos_embed_max_size=16,
        dual_attention_layers=(0,), qk_norm="rms_norm",
    )


def build_tiny_sd3(directory: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import CLIPTokenizer, T5Tokenizer

    scratch = directory / "_tokenizer_build"
    write_clip_tokenizer(scratch / "tokenizer")
    write_clip_tokenizer(scratch / "tokenizer_2", pad_token="!")
    write_t5_tokenizer(scratch / "tokenizer_3")
    tokenizer_3 = T5Tokenizer.from_pretrained(str(scratch / "tokenizer_3"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(60)
        transformer = tiny_sd3_transformer()
        strengthen_context_attention(transformer)
        torch.manual_seed(61)
        text_encoder, text_encoder_2 = tiny_sd3_text_encoders()
        torch.manual_seed(62)
        text_encoder_3 = tiny_t5_encoder(len(tokenizer_3), d_model=T5_DIM)
        torch.manual_seed(63)  # the VAE's unconstructed layers too: the same folder on every build
        vae = tiny_autoencoder(resolution=TINY_RESOLUTION, scaling_factor=TINY_VAE_SCALING)
    vae.register_to_config(shift_factor=TINY_VAE_SHIFT)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(str(scratch / "tokenizer")),
        text_encoder_2=text_encoder_2,
        tokenizer_2=CLIPTokenizer.from_pretrained(str(scratch / "tokenizer_2")),
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    shutil.rmtree(scratch)
    pipe.save_pretrained(str(directory), safe_serialization=True)


register(
    BuiltinModel(
        name="tiny-sd3",
        kind="pipeline",
        description="SD3.5 architecture (MMDiT, CLIP-L + CLIP-G + T5, flow matching), tiny and randomly "
        "initialised (64 px): offline demos and tests.",
        version="3",
        build=build_tiny_sd3,
        resolution=TINY_RESOLUTION,
        expectations=random_weights_note("tiny-sd3"),
    )
)
