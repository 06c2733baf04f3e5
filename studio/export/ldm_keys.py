"""diffusers -> original Stable Diffusion (LDM) parameter names, for single-file checkpoints.

The mapping is derived from the UNet/VAE configs (number of blocks, ``layers_per_block``), so the
same code serves real SD1.5 (4 down blocks, 2 layers each) and the tiny test model (2 blocks, 1
layer). It is the inverse of diffusers' ``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint``:

* UNet input block ``1 + b * (L + 1) + l`` holds down block ``b``'s resnet ``l`` (slot ``.0``) and
  attention ``l`` (slot ``.1``); index ``1 + b * (L + 1) + L`` holds its downsampler (``.0.op``).
* UNet output block ``b * (L + 1) + l`` holds up block ``b``'s resnet/attention ``l``; its upsampler
  sits after the attention (slot ``.2``) or after the resnet (slot ``.1``) when there is none.
* The VAE decoder counts its up blocks in reverse (``up.{n-1-i}``).
"""

from __future__ import annotations

import re

import torch

from studio.errors import StudioError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_TOP = {"conv_norm_out": "norm_out"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_head(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    raise KeyError(rest)


def _layers_per_block(config) -> int:
    value = config["layers_per_block"]
    if not isinstance(value, int):
        raise StudioError("Single-file export needs one layers_per_block for every UNet block (as in SD1.x/2.x).")
    return value


def unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel state dict -> ``model.diffusion_model.*`` keys."""
    if config.get("addition_embed_type") or config.get("class_embed_type"):
        raise StudioError("Single-file export supports SD1.x/2.x UNets (no added/class embeddings).")
    per = _layers_per_block(config) + 1
    has_attention = {int(m.group(1)) for k in state if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        out[UNET_PREFIX + unet_key(key, per, has_attention)] = value
    return out


def unet_key(key: str, per: int, up_attention: set[int]) -> str:
    """One diffusers UNet parameter (or module) path -> its original/SGM name, without the prefix.

    ``per`` is ``layers_per_block + 1`` (block slots per level, the downsampler included) and
    ``up_attention`` the up-block indices that have attentions (their upsampler moves to slot 2).
    Shared by SD1.x single files and SDXL's SGM names (``studio.families.sdxl.names``).
    """
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * per + layer
        return f"input_blocks.{index}.0.{_rename_head(rest, _UNET_RESNET)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(\..+)?", key):  # a parameter or the module
        return f"input_blocks.{1 + int(m[1]) * per + per - 1}.0.op{m[2] or ''}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename_head(m[2], _UNET_RESNET)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * per + layer
        return f"output_blocks.{index}.0.{_rename_head(rest, _UNET_RESNET)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv(\..+)?", key):
        block = int(m[1])
        slot = 2 if block in up_attention else 1
        return f"output_blocks.{block * per + per - 1}.{slot}.conv{m[2] or ''}"
    try:
        return _rename_head(key, _UNET_TOP)
    except KeyError:
        raise StudioError(f"Single-file export does not know where UNet parameter '{key}' goes in the SD layout.") from None


def vae_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """AutoencoderKL state dict -> ``first_stage_model.*`` keys (attention projections as 1x1 convs)."""
    up_blocks = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new, is_attention = _vae_key(key, up_blocks)
        if is_attention and value.ndim == 2:
            value = value[:, :, None, None]
        out[VAE_PREFIX + new] = value
    return out


def _vae_key(key: str, up_blocks: int) -> tuple[str, bool]:
    part, _, rest = key.partition(".")
    if part in ("quant_conv", "post_quant_conv"):
        return key, False
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        return f"{part}.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}", False
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", rest):
        return f"{part}.down.{m[1]}.downsample.conv.{m[2]}", False
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        return f"{part}.up.{up_blocks - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}", False
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", rest):
        return f"{part}.up.{up_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}", False
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
        return f"{part}.mid.block_{int(m[1]) + 1}.{m[2].replace('conv_shortcut', 'nin_shortcut')}", False
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
        return f"{part}.mid.attn_1.{_rename_head(m[1], _VAE_ATTENTION)}", True
    if rest.startswith(("conv_in.", "conv_out.", "conv_norm_out.")):
        return f"{part}.{_rename_head(rest, _VAE_TOP) if rest.startswith('conv_norm_out') else rest}", False
    raise StudioError(f"Single-file export does not know where VAE parameter '{key}' goes in the SD layout.")


def clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel state dict -> ``cond_stage_model.transformer.text_model.*`` (SD1.x's layout)."""
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        name = key if key.startswith("text_model.") else f"text_model.{key}"
        out[CLIP_PREFIX + name] = value
    return out
