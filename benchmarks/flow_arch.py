"""The real Flux.1 and SD3.5 architectures as configurations (no weights), and their analytic floors.

The configurations are those of the published diffusers folders (FLUX.1-dev's transformer, SD3.5
medium and large, CLIP-L, OpenCLIP bigG, T5-XXL's encoder). Built on the meta device they cost no
memory, so parameter counts and LoRA sizes are exact here; the floors follow
:mod:`benchmarks.floors` (weights, gradients and optimizer state; activations are measured on a GPU
by :mod:`benchmarks.flow_memory`).
"""

from __future__ import annotations

from typing import Any

import torch

FLUX_DEV = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
FLUX_SCHNELL = FLUX_DEV | {"guidance_embeds": False}
SD35_MEDIUM = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)), "qk_norm": "rms_norm",
}
SD35_LARGE = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 38, "attention_head_dim": 64,
    "num_attention_heads": 38, "joint_attention_dim": 4096, "caption_projection_dim": 2432,
    "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192, "qk_norm": "rms_norm",
}
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "flux-dev": ("FluxTransformer2DModel", FLUX_DEV),
    "sd35-medium": ("SD3Transformer2DModel", SD35_MEDIUM),
    "sd35-large": ("SD3Transformer2DModel", SD35_LARGE),
}
# Text encoders each family runs once per prompt set (cached while the denoiser trains).
TEXT_ENCODERS = {"flux-dev": ("clip_l", "t5_xxl"), "sd35-medium": ("clip_l", "clip_g", "t5_xxl"),
                 "sd35-large": ("clip_l", "clip_g", "t5_xxl")}
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def transformer(name: str, device: str | torch.device = "meta", dtype: torch.dtype = torch.bfloat16):
    """The denoiser of model ``name``, with random (or, on the meta device, no) weights."""
    import diffusers

    class_name, config = MODELS[name]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return getattr(diffusers, class_name)(**config)
    finally:
        torch.set_default_dtype(previous)


def text_encoder(kind: str):
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    with torch.device("meta"):
        if kind == "clip_l":
            return CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                num_attention_heads=12, projection_dim=768))
        if kind == "clip_g":
            return CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                                              num_attention_heads=20, projection_dim=1280, hidden_act="gelu"))
        return T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                       feed_forward_proj="gated-gelu", is_encoder_decoder=False))


def lora_parameters(model: torch.nn.Module, rank: int, targets: tuple[str, ...] = LORA_TARGETS) -> int:
    """Parameters of a rank-``rank`` LoRA on every Linear whose path ends in one of ``targets``."""
    total = 0
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(path == t or path.endswith("." + t) for t in targets):
            total += rank * (module.in_features + module.out_features)
    return total


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def floors(name: str, *, rank: int = 16) -> dict[str, Any]:
    """Analytic floors (GB) of LoRA and full fine-tuning for ``name`` (weights + grads + optimizer state).

    LoRA: the frozen transformer in bf16, the adapter in fp32 with its gradient and AdamW moments.
    Full fine-tune: fp32 weights, gradients and AdamW moments (16 B/param); with bf16 weights and
    8-bit AdamW about 2 + 2 + 2 B/param (the practical minimum without offloading).
    The text encoders are needed once, to cache the prompts' embeddings, and released before the
    denoiser trains, so their weights count in the caching phase, not the training one.
    """
    model = transformer(name)
    params = count(model)
    lora = lora_parameters(model, rank)
    encoders = {kind: count(text_encoder(kind)) for kind in TEXT_ENCODERS[name]}
    gb = 1e9
    return {
        "model": name, "transformer_params": params, "lora_rank": rank, "lora_params": lora,
        "text_encoder_params": encoders,
        "caching_phase_gb": sum(encoders.values()) * 2 / gb,
        "lora_floor_gb": (params * 2 + lora * 16) / gb,
        "full_fp32_adamw_floor_gb": params * 16 / gb,
        "full_bf16_adamw8bit_floor_gb": params * 6 / gb,
    }


def main() -> None:
    import json
    from pathlib import Path

    rows = [floors(name) for name in MODELS]
    out = Path(__file__).with_name("results")
    (out / "flow_floors.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["## Analytic floors, flow-matching transformers (weights + gradients + optimizer state)", "",
             "| model | transformer params (B) | LoRA r=16 params (M) | text encoders (B) | caching phase GB (bf16) "
             "| LoRA floor GB | full fine-tune fp32 AdamW GB | full bf16 + 8-bit AdamW GB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['transformer_params'] / 1e9:.2f} | {r['lora_params'] / 1e6:.1f} | "
                     f"{sum(r['text_encoder_params'].values()) / 1e9:.2f} | {r['caching_phase_gb']:.1f} | "
                     f"{r['lora_floor_gb']:.1f} | {r['full_fp32_adamw_floor_gb']:.1f} | {r['full_bf16_adamw8bit_floor_gb']:.1f} |")
    (out / "flow_floors.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
