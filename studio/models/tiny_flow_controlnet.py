"""Built-in tiny ControlNets for the flow families: ``tiny-controlnet-flux`` (for tiny-flux) and
``tiny-controlnet-sd3`` (for tiny-sd3).

Each is the real diffusers class derived from its tiny base the way the published ones start: a
``FluxControlNetModel`` / ``SD3ControlNetModel`` whose embedders and first transformer blocks are copied
from the base transformer (diffusers' ``from_transformer`` recipe, one double and one single block for
Flux, one joint block for SD3). The control image reaches them as VAE latents through an input projection
(``controlnet_x_embedder`` for Flux, ``pos_embed_input`` for SD3), and their outputs are added to the base's
blocks through per-block projections (``controlnet_blocks``). Those projections start at zero in a real
ControlNet and are learnt; untrained, a ControlNet does nothing, so these get small deterministic weights
instead (as tiny-controlnet's zero convolutions do): the control image visibly changes the output and
strength 0 still adds nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from studio.models import tiny_flux, tiny_sd3  # noqa: F401  (the bases register first)
from studio.models.builtin import BuiltinModel, builtin_path, get_builtin, register

CONTROL_BLOCK_STD = 0.05  # stands for a trained ControlNet's output projections (tiny-controlnet's ZERO_CONV_STD)
CONTROL_INPUT_GAIN = 6.0  # the control latents' input projection, relative to unit-variance initialisation

_EXPECTATION = (
    "A tiny model made for offline demos and tests, with random weights: it shows that the ControlNet path works, "
    "not what a real ControlNet does."
)


def _transformer(base: str, class_name: str):
    import diffusers

    return getattr(diffusers, class_name).from_pretrained(str(builtin_path(base)), subfolder="transformer")


def _steer(input_projection: torch.nn.Module, blocks: list[torch.nn.Linear], seed: int) -> None:
    """Give the zero-initialised control input and output projections small deterministic weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = input_projection.weight
        fan_in = weight[0].numel()
        weight.copy_(torch.randn(weight.shape, generator=generator) * CONTROL_INPUT_GAIN / fan_in ** 0.5)
        input_projection.bias.zero_()
        for block in blocks:
            block.weight.copy_(torch.randn(block.weight.shape, generator=generator) * CONTROL_BLOCK_STD)
            block.bias.zero_()


def build_tiny_controlnet_flux(directory: Path) -> None:
    from diffusers import FluxControlNetModel

    torch.manual_seed(34)  # any layer not copied or set below: the same folder on every build
    transformer = _transformer("tiny-flux", "FluxTransformer2DModel")
    config = transformer.config
    controlnet = FluxControlNetModel.from_transformer(
        transformer, num_layers=1, num_single_layers=1, attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads)
    _steer(controlnet.controlnet_x_embedder, [*controlnet.controlnet_blocks, *controlnet.controlnet_single_blocks], 34)
    controlnet.save_pretrained(str(directory), safe_serialization=True)


def build_tiny_controlnet_sd3(directory: Path) -> None:
    from diffusers import SD3ControlNetModel

    torch.manual_seed(35)  # any layer not copied or set below: the same folder on every build
    transformer = _transformer("tiny-sd3", "SD3Transformer2DModel")
    config = transformer.config
    # diffusers' from_transformer writes into the transformer's frozen config; the same recipe, spelt out
    controlnet = SD3ControlNetModel(
        sample_size=config.sample_size, patch_size=config.patch_size, in_channels=config.in_channels,
        num_layers=1, attention_head_dim=config.attention_head_dim, num_attention_heads=config.num_attention_heads,
        joint_attention_dim=config.joint_attention_dim, caption_projection_dim=config.caption_projection_dim,
        pooled_projection_dim=config.pooled_projection_dim, out_channels=config.out_channels,
        pos_embed_max_size=config.pos_embed_max_size, dual_attention_layers=tuple(config.dual_attention_layers),
        qk_norm=config.qk_norm, force_zeros_for_pooled_projection=False,
    )
    controlnet.pos_embed.load_state_dict(transformer.pos_embed.state_dict())
    controlnet.time_text_embed.load_state_dict(transformer.time_text_embed.state_dict())
    controlnet.context_embedder.load_state_dict(transformer.context_embedder.state_dict())
    controlnet.transformer_blocks.load_state_dict(transformer.transformer_blocks.state_dict(), strict=False)
    _steer(controlnet.pos_embed_input.proj, list(controlnet.controlnet_blocks), 35)
    controlnet.save_pretrained(str(directory), safe_serialization=True)


def _version(base: str, own: int = 1) -> str:
    return f"{own}-{base}{get_builtin(base).version}"  # rebuilt whenever the base changes


register(BuiltinModel(
    name="tiny-controlnet-flux", kind="controlnet", version=_version("tiny-flux"),
    description="ControlNet for tiny-flux (FluxControlNetModel, 64 px, random weights): offline ControlNet tests.",
    build=build_tiny_controlnet_flux, resolution=64, expectations=_EXPECTATION,
))
register(BuiltinModel(
    name="tiny-controlnet-sd3", kind="controlnet", version=_version("tiny-sd3"),
    description="ControlNet for tiny-sd3 (SD3ControlNetModel, 64 px, random weights): offline ControlNet tests.",
    build=build_tiny_controlnet_sd3, resolution=64, expectations=_EXPECTATION,
))
