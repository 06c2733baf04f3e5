"""``tiny-sd``: the Stable Diffusion 1.x architecture, shrunk so a training step runs in well
under a second on two CPU cores.

Every component is the real diffusers/transformers class (UNet2DConditionModel with cross-attention,
AutoencoderKL with SD's 8x downsampling, CLIPTextModel, CLIPTokenizer with the real CLIP vocabulary,
SD1.x scheduler configs). Weights are random but deterministic, except the VAE's, which are set so that it really
autoencodes (see :mod:`studio.models.tiny_vae`): otherwise nothing a trained UNet produced could be
seen or scored.
"""

from __future__ import annotations

from pathlib import Path

import torch

from studio.models.builtin import BuiltinModel, register
from studio.models.tiny_vae import tiny_autoencoder
from studio.models.tokenizer import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE, write_clip_tokenizer

TINY_RESOLUTION = 64
TINY_VAE_SCALING = 2.0  # 1 / std of the tiny VAE's colour latents
SD1_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
}


def tiny_text_encoder_config(hidden_size: int = 32, layers: int = 2, projection_dim: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=projection_dim,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_act="quick_gelu",
    )


CROSS_ATTENTION_GAIN = 10.0


def strengthen_cross_attention(unet, gain: float = CROSS_ATTENTION_GAIN) -> None:
    """Scale the cross-attention key/value projections at initialisation.

    In a randomly initialised UNet the text barely moves the prediction, so nothing that learns
    through the text (textual inversion, text-encoder LoRA) could show it. A larger initial gain on
    the text path gives the tiny model the text sensitivity a pretrained one has.
    """
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                module.to_k.weight.mul_(gain)
                module.to_v.weight.mul_(gain)


def build_tiny_sd(directory: Path) -> None:
    from diffusers import DDPMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=TINY_RESOLUTION // 8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            attention_head_dim=4,
            cross_attention_dim=32,
            norm_num_groups=8,
        )
        strengthen_cross_attention(unet)
        torch.manual_seed(1)
        text_encoder = CLIPTextModel(tiny_text_encoder_config())

    vae = tiny_autoencoder(resolution=TINY_RESOLUTION, scaling_factor=TINY_VAE_SCALING)
    tokenizer_dir = directory / "_tokenizer_build"
    write_clip_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    scheduler = PNDMScheduler.from_config(SD1_SCHEDULER)
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(directory), safe_serialization=True)
    DDPMScheduler.from_config(scheduler.config)  # the training scheduler must be derivable from it
    for leftover in tokenizer_dir.iterdir():
        leftover.unlink()
    tokenizer_dir.rmdir()


register(
    BuiltinModel(
        name="tiny-sd",
        kind="pipeline",
        description="SD1.x architecture, tiny and randomly initialised (64 px): offline demos and tests.",
        version="3",
        build=build_tiny_sd,
        resolution=TINY_RESOLUTION,
        expectations=(
            "Built-in tiny-sd: a tiny model made for offline demos and tests, with random weights. Its images are "
            "colour blobs, and that is expected: it shows that training, sampling and export work, not what a real "
            "model learns. Train on a real base model (a Hub id, a local folder or a .safetensors file) for real images."
        ),
    )
)
