"""Flux's single-file layout (BFL's transformer): Studio's inverse conversion reads every tensor back, and
ComfyUI's Flux checkpoint rules accept the real FLUX.1-dev layout (meta device) and refuse what they cannot build."""

from __future__ import annotations

import torch

from studio.families.flux.names import bfl_transformer_state
from studio.families.flux.single_file import (
    comfyui_flux_checkpoint,
    diffusers_transformer_state,
    forge_flux_checkpoint,
)


def test_inverse_conversion_reads_every_tensor_back():
    from studio.models.tiny_flux import tiny_flux_transformer

    model = tiny_flux_transformer()
    state = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(i)) for i, (k, v) in
             enumerate(model.state_dict().items())}  # distinct values everywhere, so a swapped split shows
    bfl = bfl_transformer_state(state)
    back = diffusers_transformer_state(bfl, model.config)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert len(bfl) < len(state)  # fused: qkv and linear1 hold several diffusers tensors each


def test_comfyui_checkpoint_rules_on_the_real_flux_dev_layout():
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        real = FluxTransformer2DModel(guidance_embeds=True)  # FLUX.1-dev's config
    shapes = {k: tuple(v.shape) for k, v in bfl_transformer_state(real.state_dict()).items()}
    verdict = comfyui_flux_checkpoint(shapes)
    assert verdict["loads"] == "all", verdict
    assert verdict["config"]["num_layers"] == 19 and verdict["config"]["num_single_layers"] == 38
    assert comfyui_flux_checkpoint({f"model.diffusion_model.{k}": v for k, v in shapes.items()},
                                   "model.diffusion_model.")["loads"] == "all"
    qkv = "double_blocks.0.img_attn.qkv.weight"
    assert comfyui_flux_checkpoint({k: v for k, v in shapes.items() if k != qkv})["loads"] == "refused"
    unfused = {k: v for k, v in shapes.items() if k != qkv} | {"double_blocks.0.img_attn.to_q.weight": (3072, 3072)}
    assert comfyui_flux_checkpoint(unfused)["loads"] == "refused"
    no_norm = {k.replace("norm.key_norm.scale", "key_norm.weight"): v for k, v in shapes.items()}
    assert comfyui_flux_checkpoint(no_norm)["loads"] == "none"  # diffusers-like norms: not recognised as Flux


def test_comfyui_refuses_a_tiny_flux_file_it_would_build_at_flux1_widths():
    from studio.models.tiny_flux import tiny_flux_transformer

    shapes = {k: tuple(v.shape) for k, v in bfl_transformer_state(tiny_flux_transformer().state_dict()).items()}
    verdict = comfyui_flux_checkpoint(shapes)
    assert verdict["loads"] == "refused" and "3072" in verdict["why"]


def test_forge_detects_the_bare_flux_dev_transformer_file_and_refuses_tiny_widths():
    from diffusers import FluxTransformer2DModel

    from studio.models.tiny_flux import tiny_flux_transformer

    with torch.device("meta"):
        dev, schnell = FluxTransformer2DModel(guidance_embeds=True), FluxTransformer2DModel(guidance_embeds=False)
    bare = {k: tuple(v.shape) for k, v in bfl_transformer_state(dev.state_dict()).items()}  # what Studio writes
    verdict = forge_flux_checkpoint(bare)
    assert verdict["loads"] == "all" and verdict["repo"] == "black-forest-labs/FLUX.1-dev", verdict
    fast = {k: tuple(v.shape) for k, v in bfl_transformer_state(schnell.state_dict()).items()}
    assert forge_flux_checkpoint(fast)["repo"] == "black-forest-labs/FLUX.1-schnell"
    tiny = {k: tuple(v.shape) for k, v in bfl_transformer_state(tiny_flux_transformer().state_dict()).items()}
    assert forge_flux_checkpoint(tiny)["loads"] == "refused"
