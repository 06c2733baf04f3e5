"""The real Stable Diffusion 1.5 / SDXL and evaluation-backbone architectures, randomly initialised in memory.

Memory and FLOPs depend on shapes and dtypes, never on weight values, so these builders let the
benchmarks measure the real architectures offline without downloading anything. Configs are written
out here (the published ``config.json`` values of SD1.5's UNet and VAE, CLIP ViT-L/14's text tower,
SDXL 1.0's UNet, VAE and OpenCLIP ViT-bigG/14 text tower, CLIP ViT-B/32 and DINO ViT-S/16). Modules are created on the meta device and then materialised
directly in the requested dtype with a cheap scaled-normal fill: building SD1.5 takes seconds, and
a bf16 build never holds an fp32 copy.

They are deliberately *not* registered as built-ins: materialising gigabytes of random weights on
disk would help no user. Use :func:`sd15_base` / :func:`sdxl_base` and ``Trainer(..., base=...)`` instead.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

from studio.models.tiny_sd import SD1_SCHEDULER
from studio.models.tokenizer import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE, write_clip_tokenizer

SD15_REF = "sd15-arch-random"
SDXL_REF = "sdxl-arch-random"
POOL_SIZE = 2**20

# What SD1.5's and SDXL's UNet configs share (the published config.json values).
UNET_COMMON = {
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_scale_factor": 1,
}
SD15_UNET = {
    **UNET_COMMON,
    "sample_size": 64,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
}
SD_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
CLIP_TOKENS = {"vocab_size": CLIP_VOCAB_SIZE, "max_position_embeddings": CLIP_MAX_LENGTH,
               "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407, "hidden_act": "quick_gelu"}
CLIP_L14_TEXT = {**CLIP_TOKENS, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                 "num_attention_heads": 12, "projection_dim": 768}
# stabilityai/stable-diffusion-xl-base-1.0: unet/, vae/ (same layout as SD's, its own scaling and
# fp32 upcast), text_encoder/ (CLIP ViT-L/14's text tower) and text_encoder_2/ (OpenCLIP ViT-bigG/14's).
SDXL_UNET = {
    **UNET_COMMON,
    "sample_size": 128,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "use_linear_projection": True,
    "cross_attention_dim": 2048,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
SDXL_VAE = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
OPENCLIP_BIGG14_TEXT = {**CLIP_TOKENS, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                        "num_attention_heads": 20, "projection_dim": 1280, "hidden_act": "gelu"}
CLIP_B32 = {
    "text_config": {**CLIP_TOKENS, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                    "num_attention_heads": 8},
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                      "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu"},
    "projection_dim": 512,
}
DINO_S16 = {"image_size": 224, "patch_size": 16, "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
            "intermediate_size": 1536, "qkv_bias": True, "hidden_act": "gelu", "layer_norm_eps": 1e-6}
# Published parameter counts (millions), checked by the tests of this module.
PARAMETER_COUNTS_M = {"unet": 859.52, "vae": 83.65, "text_encoder": 123.06, "clip_b32": 151.28, "dino_s16": 21.67,
                      "sdxl_unet": 2567.46, "sdxl_text_encoder_2": 694.66}


def _fill_from_pool(param: torch.Tensor, pool: torch.Tensor, std: float) -> None:
    flat = param.view(-1)
    for start in range(0, flat.numel(), pool.numel()):
        chunk = flat[start : start + pool.numel()]
        chunk.copy_(pool[: chunk.numel()]).mul_(std)


def materialize_random(build, *, dtype: torch.dtype = torch.float32, device="cpu", seed: int = 0) -> torch.nn.Module:
    """``build()`` on the meta device, then real storage in ``dtype`` filled with random values.

    Weights get N(0, 1/fan_in) values (activations stay in a sane range), 1-D weights 1, biases 0; the
    values are copied from one pool of 2**20 normal draws, as drawing 860 M fresh ones takes a minute
    on a small CPU and the values do not matter here. Integer
    ``position_ids`` buffers, the only buffers these architectures have, are rebuilt as ranges.
    """
    with torch.device("meta"):
        module = build()
    # nn.Module.to, not diffusers' override: there is nothing to keep in fp32 in a meta module.
    module = torch.nn.Module.to(module, dtype=dtype).to_empty(device=device)
    pool = torch.randn(POOL_SIZE, generator=torch.Generator().manual_seed(seed)).to(device, dtype)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.dim() <= 1:
                param.fill_(1.0)
            else:
                _fill_from_pool(param, pool, 1.0 / math.sqrt(param[0].numel()))
        for name, buffer in module.named_buffers():
            if not name.endswith("position_ids"):
                raise RuntimeError(f"materialize_random does not know how to fill buffer {name}")
            buffer.copy_(torch.arange(buffer.shape[-1], device=device).expand_as(buffer))
    return module.eval()


def sd15_unet(dtype: torch.dtype = torch.float32, device="cpu"):
    from diffusers import UNet2DConditionModel

    return materialize_random(lambda: UNet2DConditionModel(**SD15_UNET), dtype=dtype, device=device, seed=0)


def sd_vae(dtype: torch.dtype = torch.float32, device="cpu"):
    from diffusers import AutoencoderKL

    return materialize_random(lambda: AutoencoderKL(**SD_VAE), dtype=dtype, device=device, seed=1)


def clip_l14_text_encoder(dtype: torch.dtype = torch.float32, device="cpu"):
    from transformers import CLIPTextConfig, CLIPTextModel

    return materialize_random(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L14_TEXT)), dtype=dtype, device=device, seed=2)


def clip_tokenizer(pad_token: str | None = None):
    """The CLIP tokenizer as SD1.x ships it; ``pad_token="!"`` gives SDXL's ``tokenizer_2``."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer(Path(folder), **({"pad_token": pad_token} if pad_token else {}))
        return CLIPTokenizer.from_pretrained(folder)


def sd15_pipeline(*, unet_dtype: torch.dtype = torch.float32, vae_dtype: torch.dtype = torch.float32,
                  text_encoder_dtype: torch.dtype = torch.float32):
    """A ``StableDiffusionPipeline`` with SD1.5's exact architecture and random weights.

    Each component is built directly in its dtype, like loading a checkpoint with ``torch_dtype``.
    """
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        unet=sd15_unet(unet_dtype), vae=sd_vae(vae_dtype), text_encoder=clip_l14_text_encoder(text_encoder_dtype),
        tokenizer=clip_tokenizer(), scheduler=PNDMScheduler.from_config(SD1_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def sd15_base(**dtypes: torch.dtype):
    """SD1.5's architecture as a :class:`~studio.models.BaseModel`, for ``Trainer(..., base=...)``."""
    from studio.models.loader import BaseModel

    return BaseModel(SD15_REF, "memory", sd15_pipeline(**dtypes))


def sdxl_unet(dtype: torch.dtype = torch.float32, device="cpu"):
    from diffusers import UNet2DConditionModel

    return materialize_random(lambda: UNet2DConditionModel(**SDXL_UNET), dtype=dtype, device=device, seed=5)


def sdxl_vae(dtype: torch.dtype = torch.float32, device="cpu"):
    from diffusers import AutoencoderKL

    return materialize_random(lambda: AutoencoderKL(**SDXL_VAE), dtype=dtype, device=device, seed=6)


def openclip_bigg14_text_encoder(dtype: torch.dtype = torch.float32, device="cpu"):
    """``CLIPTextModelWithProjection`` shaped like SDXL's ``text_encoder_2``."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(**OPENCLIP_BIGG14_TEXT)
    return materialize_random(lambda: CLIPTextModelWithProjection(config), dtype=dtype, device=device, seed=7)


def sdxl_pipeline(*, unet_dtype: torch.dtype = torch.float32, vae_dtype: torch.dtype = torch.float32,
                  text_encoder_dtype: torch.dtype = torch.float32, text_encoder_2_dtype: torch.dtype | None = None):
    """A ``StableDiffusionXLPipeline`` with SDXL 1.0's exact architecture and random weights."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from studio.models.tiny_sdxl import SDXL_SCHEDULER

    return StableDiffusionXLPipeline(
        unet=sdxl_unet(unet_dtype), vae=sdxl_vae(vae_dtype), text_encoder=clip_l14_text_encoder(text_encoder_dtype),
        text_encoder_2=openclip_bigg14_text_encoder(text_encoder_2_dtype or text_encoder_dtype),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(pad_token="!"),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER), force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def sdxl_base(**dtypes: torch.dtype):
    """SDXL's architecture as a :class:`~studio.models.BaseModel`, for ``Trainer(..., base=...)``."""
    from studio.models.loader import BaseModel

    return BaseModel(SDXL_REF, "memory", sdxl_pipeline(**dtypes))


def clip_b32_model(dtype: torch.dtype = torch.float32, device="cpu"):
    """``CLIPModel`` shaped like ``openai/clip-vit-base-patch32``."""
    from transformers import CLIPConfig, CLIPModel

    return materialize_random(lambda: CLIPModel(CLIPConfig(**CLIP_B32)), dtype=dtype, device=device, seed=3)


def dino_s16_model(dtype: torch.dtype = torch.float32, device="cpu"):
    """``ViTModel`` shaped like ``facebook/dino-vits16`` (no pooling layer, as DINO uses the CLS token)."""
    from transformers import ViTConfig, ViTModel

    return materialize_random(lambda: ViTModel(ViTConfig(**DINO_S16), add_pooling_layer=False), dtype=dtype, device=device, seed=4)


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
