"""kohya sd-scripts' ``networks/lora.py`` ``create_network_from_weights``, restated.

It creates LoRA modules only for ``Linear``/``Conv2d`` layers inside the UNet's ``Transformer2DModel``,
``ResnetBlock2D``, ``Downsample2D`` and ``Upsample2D`` blocks and the text encoders' ``CLIPAttention`` and
``CLIPMLP``, named as the family's kohya names; then it loads the file's tensors into those modules
and ignores every other key without a word. So ``conv_in``, ``conv_out``, the time embedding, SDXL's
``label_emb`` and CLIP-G's ``text_projection`` never load there.
"""

from __future__ import annotations

import re

from studio.export.consumers.layout import ModelLayout
from studio.export.consumers.rules import KOHYA_PAIR, KeyMatch, match_keys

NAME = "kohya sd-scripts"
_UNET_BLOCK = re.compile(
    r"^(down_blocks\.\d+\.(attentions|resnets|downsamplers)|mid_block\.(attentions|resnets)"
    r"|up_blocks\.\d+\.(attentions|resnets|upsamplers))\.\d+\."
)
_TEXT_BLOCK = re.compile(r"^text_model\.encoder\.layers\.\d+\.(self_attn|mlp)\.")


def lora_names(layout: ModelLayout) -> dict[str, tuple[str, str]]:
    names = {}
    for module in layout.modules:
        block = _UNET_BLOCK if module.component == "unet" else _TEXT_BLOCK
        if block.match(module.path):
            names[layout.family.kohya_lora_name(module.component, module.path, layout.unet_config)] = module.key
    return names


def match(keys: list[str], layout: ModelLayout) -> KeyMatch:
    return match_keys(NAME, keys, lora_names(layout), (KOHYA_PAIR,))
