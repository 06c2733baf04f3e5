"""AUTOMATIC1111's and Forge's LoRA key rules, restated.

* A1111 (extensions-builtin/Lora/networks.py): a key is split at its *first* dot into a network name
  and a tensor name (``lora_up.weight``, ``lora_down.weight``, ``alpha``). The name must be a kohya name:
  ``lora_unet_<original LDM/SGM module name>`` (looked up as ``diffusion_model_…``), or for the SD1.x
  diffusers-named UNet one its converter rewrites (``conv_in``, ``conv_out``, ``time_embedding_linear_N``,
  ``down/mid/up_blocks`` attentions and resnets, ``downsamplers_0_conv``, ``upsamplers_0_conv``); text
  encoders ``lora_te_``/``lora_te1_text_model_encoder_layers_N_…`` and, on SDXL's OpenCLIP encoder,
  ``lora_te2_text_model_encoder_layers_N_`` + one of the six projections (its ``text_projection`` is a
  bare parameter there, not a layer). Keys with ``unet.``/``text_encoder.`` prefixes never match.
* Forge (extensions-builtin/sd_forge_lora): ComfyUI's key map (:mod:`.comfyui`); a file with more than
  12 keys it cannot place is refused whole.
"""

from __future__ import annotations

import re

from studio.export.consumers import comfyui
from studio.export.consumers.layout import ModelLayout
from studio.export.consumers.rules import KOHYA_PAIR, KeyMatch, match_keys

A1111 = "A1111"
FORGE = "Forge"
FORGE_MAX_UNMATCHED = 12
# The diffusers-named SD1.x UNet modules A1111's converter rewrites to LDM names.
_A1111_DIFFUSERS_UNET = re.compile(
    r"^(conv_in|conv_out|time_embedding\.linear_[12]"
    r"|(down_blocks\.\d+\.|mid_block\.|up_blocks\.\d+\.)(attentions\.\d+\..+|resnets\.\d+\.(conv1|conv2|time_emb_proj|conv_shortcut))"
    r"|down_blocks\.\d+\.downsamplers\.0\.conv|up_blocks\.\d+\.upsamplers\.0\.conv)$"
)
_ENCODER_PROJECTION = re.compile(r"^text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")
_ENCODER_LAYER = re.compile(r"^text_model\.encoder\.layers\.\d+\.")


def a1111_names(layout: ModelLayout) -> dict[str, tuple[str, str]]:
    from studio.families.sdxl.names import sgm_unet_name

    names: dict[str, tuple[str, str]] = {}
    for module in layout.modules:
        flat = module.path.replace(".", "_")
        if module.component == "unet":
            names["lora_unet_" + sgm_unet_name(module.path, layout.unet_config).replace(".", "_")] = module.key
            if _A1111_DIFFUSERS_UNET.match(module.path):
                names[f"lora_unet_{flat}"] = module.key
        elif module.component == "text_encoder" and _ENCODER_LAYER.match(module.path):
            names[f"lora_te_{flat}"] = module.key
            names[f"lora_te1_{flat}"] = module.key
        elif module.component == "text_encoder_2" and _ENCODER_PROJECTION.match(module.path):
            names[f"lora_te2_{flat}"] = module.key
    return names


def match_a1111(keys: list[str], layout: ModelLayout) -> KeyMatch:
    # Splitting at the first dot means only kohya spellings (name.lora_up.weight) can ever match.
    return match_keys(A1111, keys, a1111_names(layout), (KOHYA_PAIR,))


def match_forge(keys: list[str], layout: ModelLayout) -> KeyMatch:
    result = match_keys(FORGE, keys, comfyui.lora_names(layout), comfyui.PAIRS)
    if len(result.dropped) > FORGE_MAX_UNMATCHED:
        result.rejected = f"{len(result.dropped)} keys unmatched (Forge refuses a LoRA with more than {FORGE_MAX_UNMATCHED})"
    return result
