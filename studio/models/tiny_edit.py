"""Built-in tiny editing models: ControlNets for tiny-sd and tiny-sdxl, and tiny-sd's inpainting and
instruction-tuned (InstructPix2Pix) variants.

Each is the real diffusers class, derived from its tiny base the way the real ones are derived from
theirs, so adapters trained on the base fit them where the architectures match:

- ``tiny-controlnet`` / ``tiny-controlnet-sdxl``: ``ControlNetModel.from_unet`` (the base UNet's encoder
  copied). Real ControlNets start with zero "zero convolutions" and learn them; untrained, a ControlNet
  does nothing, so these are given small deterministic weights instead, which makes the control image
  visibly change the output (and strength 0 still adds nothing);
- ``tiny-sd-inpaint``: tiny-sd's UNet with a 9-channel input (latents, mask, masked-image latents), as
  SD1.5-inpainting extends SD1.5;
- ``tiny-sd-instruct``: tiny-sd's UNet with an 8-channel input (latents, image latents), as
  InstructPix2Pix extends SD1.5.

The extra input channels get small deterministic weights (the real models learnt them). Everything
else is copied from the base, so a LoRA or embedding trained on tiny-sd loads onto them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from studio.models import tiny_sd, tiny_sdxl  # noqa: F401  (the bases register first)
from studio.models.builtin import BuiltinModel, builtin_path, get_builtin, register

ZERO_CONV_STD = 0.05  # stands for a trained ControlNet's zero convolutions
EXTRA_INPUT_STD = 0.05  # stands for the learnt weights of an inpainting / instruct UNet's extra channels
TINY_CONTROL_CHANNELS = (8, 16, 32, 32)  # conditioning embedding: 3 stride-2 steps, image -> latent size

_EXPECTATION = (
    "A tiny model made for offline demos and tests, with random weights: it shows that the editing path works, "
    "not what a real model does."
)


def _load_unet(base: str):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(builtin_path(base)), subfolder="unet")


def _build_controlnet(base: str, seed: int, directory: Path) -> None:
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(_load_unet(base), conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS)
    generator = torch.Generator().manual_seed(seed)
    embedding = controlnet.controlnet_cond_embedding
    with torch.no_grad():
        # The conditioning embedding carries the control image at unit scale (a default initialisation lets
        # it fade through the SiLU stack), so the image, not just its presence, steers the ControlNet.
        for conv in [embedding.conv_in, *embedding.blocks, embedding.conv_out]:
            fan_in = conv.weight[0].numel()
            gain = 1.0 if conv is embedding.conv_out else 2.0
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * gain / fan_in ** 0.5)
            conv.bias.zero_()
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * ZERO_CONV_STD)
            conv.bias.zero_()
    controlnet.save_pretrained(str(directory), safe_serialization=True)


def _widened_unet(base: str, in_channels: int, seed: int):
    """The base UNet with ``in_channels`` inputs: the first 4 copied, the rest small and deterministic."""
    from diffusers import UNet2DConditionModel

    unet = _load_unet(base)
    wide = UNet2DConditionModel.from_config({**unet.config, "in_channels": in_channels})
    state = unet.state_dict()
    weight = state["conv_in.weight"]
    extra = torch.randn((weight.shape[0], in_channels - weight.shape[1], *weight.shape[2:]),
                        generator=torch.Generator().manual_seed(seed)) * EXTRA_INPUT_STD
    state["conv_in.weight"] = torch.cat([weight, extra], dim=1)
    wide.load_state_dict(state)
    return wide


def _build_variant(pipeline_class: str, in_channels: int, seed: int, directory: Path) -> None:
    import diffusers

    from studio.quiet import quiet_loaders

    with quiet_loaders():
        base = diffusers.DiffusionPipeline.from_pretrained(str(builtin_path("tiny-sd")))
    components = {**base.components, "unet": _widened_unet("tiny-sd", in_channels, seed)}
    pipe = getattr(diffusers, pipeline_class)(**components)
    pipe.save_pretrained(str(directory), safe_serialization=True)


def _version(base: str, own: int = 1) -> str:
    return f"{own}-{base}{get_builtin(base).version}"  # rebuilt whenever the base changes


register(BuiltinModel(
    name="tiny-controlnet", kind="controlnet", version=_version("tiny-sd", 2),
    description="ControlNet for tiny-sd (SD1.x architecture, 64 px, random weights): offline ControlNet tests.",
    build=lambda directory: _build_controlnet("tiny-sd", 30, directory), resolution=64, expectations=_EXPECTATION,
))
register(BuiltinModel(
    name="tiny-controlnet-sdxl", kind="controlnet", version=_version("tiny-sdxl", 2),
    description="ControlNet for tiny-sdxl (SDXL architecture, 64 px, random weights): offline ControlNet tests.",
    build=lambda directory: _build_controlnet("tiny-sdxl", 31, directory), resolution=64, expectations=_EXPECTATION,
))
register(BuiltinModel(
    name="tiny-sd-inpaint", kind="inpaint", version=_version("tiny-sd"),
    description="tiny-sd as an inpainting model (9-channel UNet input, like SD1.5-inpainting): offline tests.",
    build=lambda directory: _build_variant("StableDiffusionInpaintPipeline", 9, 32, directory), resolution=64,
    expectations=_EXPECTATION,
))
register(BuiltinModel(
    name="tiny-sd-instruct", kind="instruct", version=_version("tiny-sd"),
    description="tiny-sd as an instruction-tuned model (8-channel UNet input, like InstructPix2Pix): offline tests.",
    build=lambda directory: _build_variant("StableDiffusionInstructPix2PixPipeline", 8, 33, directory),
    resolution=64, expectations=_EXPECTATION,
))
