"""``tiny-flux``: the Flux.1-dev architecture, shrunk so a training step runs in well under a second on
two CPU cores.

Every component is the real diffusers/transformers class with Flux's layout: ``FluxTransformer2DModel``
(double- and single-stream blocks, rotary positions over (0, row, column), guidance embedding as
Flux-dev has) on 2×2-packed latents; CLIP-L (``CLIPTextModel``, its pooled output conditions) with the
real CLIP vocabulary; T5 (``T5EncoderModel``) with the T5 tokenizer of :mod:`studio.models.t5_vocab`;
Flux-dev's ``FlowMatchEulerDiscreteScheduler`` configuration (resolution-dependent shift).

The VAE is the constructed autoencoder of tiny-sd (4 latent channels where Flux's has 16) with a
shift factor, as Flux's VAE has, so the code path that subtracts it runs. The transformer's context
(text) projections get an initial gain so the text path matters, as tiny-sd's cross-attention does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from studio.models.builtin import BuiltinModel, random_weights_note, register
from studio.models.t5_vocab import write_t5_tokenizer
from studio.models.tiny_sd import (
    CROSS_ATTENTION_GAIN,
    TINY_RESOLUTION,
    TINY_VAE_SCALING,
    tiny_text_encoder_config,
)
from studio.models.tiny_vae import LATENT_CHANNELS, tiny_autoencoder
from studio.models.tokenizer import write_clip_tokenizer

CLIP_DIM = 32  # stands for CLIP ViT-L's 768 (its pooled output feeds pooled_projections)
T5_DIM = 32  # stands for T5-XXL's 4096 (joint_attention_dim)
TINY_VAE_SHIFT = 0.1  # Flux's VAE: 0.1159
FLUX_DEV_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


def tiny_t5_encoder(vocab_size: int, d_model: int = T5_DIM):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, is_encoder_decoder=False, use_cache=False,
    ))


def strengthen_context_attention(transformer, gain: float = CROSS_ATTENTION_GAIN) -> None:
    """Scale the joint-attention projections of the text stream at initialisation (see tiny-sd's
    ``strengthen_cross_attention``: a random model barely listens to the text otherwise)."""
    with torch.no_grad():
        for name, module in transformer.named_modules():
            if name.endswith(("add_k_proj", "add_v_proj")):
                module.weight.mul_(gain)


def tiny_flux_transformer():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1, in_channels=LATENT_CHANNELS * 4, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=T5_DIM, pooled_projection_dim=CLIP_DIM, guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )


def build_tiny_flux(directory: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextModel, CLIPTokenizer, T5Tokenizer

    scratch = directory / "_tokenizer_build"
    write_clip_tokenizer(scratch / "tokenizer")
    write_t5_tokenizer(scratch / "tokenizer_2")
    tokenizer_2 = T5Tokenizer.from_pretrained(str(scratch / "tokenizer_2"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(40)
        transformer = tiny_flux_transformer()
        strengthen_context_attention(transformer)
        torch.manual_seed(41)
        text_encoder = CLIPTextModel(tiny_text_encoder_config(hidden_size=CLIP_DIM))
        torch.manual_seed(42)
        text_encoder_2 = tiny_t5_encoder(len(tokenizer_2))
        torch.manual_seed(43)  # the VAE's unconstructed layers too: the same folder on every build
        vae = tiny_autoencoder(resolution=TINY_RESOLUTION, scaling_factor=TINY_VAE_SCALING)
    vae.register_to_config(shift_factor=TINY_VAE_SHIFT)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(FLUX_DEV_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(str(scratch / "tokenizer")),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    shutil.rmtree(scratch)
    pipe.save_pretrained(str(directory), safe_serialization=True)


register(
    BuiltinModel(
        name="tiny-flux",
        kind="pipeline",
        description="Flux.1-dev architecture (packed latents, CLIP-L + T5, guidance embedding, flow matching), "
        "tiny and randomly initialised (64 px): offline demos and tests.",
        version="2",
        build=build_tiny_flux,
        resolution=TINY_RESOLUTION,
        expectations=random_weights_note("tiny-flux"),
    )
)
