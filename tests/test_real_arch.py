"""The in-memory real architectures the benchmarks use match the published models' sizes."""

from __future__ import annotations

import pytest
import torch

from studio.models import real_arch


def _meta_count(build) -> float:
    with torch.device("meta"):
        module = build()
    return round(real_arch.parameter_count(module) / 1e6, 2)


@pytest.mark.parametrize("name", ["unet", "vae", "text_encoder", "clip_b32", "sdxl_unet", "sdxl_text_encoder_2"])
def test_configs_match_published_parameter_counts(name):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    builders = {
        "unet": lambda: UNet2DConditionModel(**real_arch.SD15_UNET),
        "vae": lambda: AutoencoderKL(**real_arch.SD_VAE),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**real_arch.CLIP_L14_TEXT)),
        "clip_b32": lambda: CLIPModel(CLIPConfig(**real_arch.CLIP_B32)),
        "sdxl_unet": lambda: UNet2DConditionModel(**real_arch.SDXL_UNET),
        "sdxl_text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**real_arch.OPENCLIP_BIGG14_TEXT)),
    }
    assert _meta_count(builders[name]) == real_arch.PARAMETER_COUNTS_M[name]


def test_materialized_model_is_finite_and_runs():
    model = real_arch.dino_s16_model()
    assert round(real_arch.parameter_count(model) / 1e6, 2) == real_arch.PARAMETER_COUNTS_M["dino_s16"]
    with torch.no_grad():
        out = model(pixel_values=torch.randn(1, 3, 224, 224)).last_hidden_state
    assert out.shape == (1, 197, 384) and torch.isfinite(out).all()
    bf16 = real_arch.materialize_random(lambda: torch.nn.Linear(8, 8), dtype=torch.bfloat16)
    assert bf16.weight.dtype == torch.bfloat16 and bf16.bias.abs().sum() == 0
