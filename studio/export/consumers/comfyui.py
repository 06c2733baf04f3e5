"""ComfyUI's LoRA key rules (comfy/lora.py ``model_lora_keys_unet`` / ``model_lora_keys_clip`` and the
LoRA weight adapter's ``load``), restated.

* UNet: ``lora_unet_`` + the module's original (LDM/SGM) name or its diffusers name, with ``_`` for
  ``.``; ``diffusion_model.<original name>``; and diffusers names with or without a ``unet.`` prefix
  in the *attention-processor* spelling only: ``.to_q`` -> ``.processor.to_q``, ``.to_out.0`` ->
  ``.processor.to_out``. So ``unet.<…>.attn1.to_q.lora_A.weight`` (what ``save_lora_weights`` writes)
  is "lora key not loaded", while ``unet.<…>.resnets.0.conv1.lora_A.weight`` loads.
* Text encoders: only the six projections of each encoder layer (``self_attn.{q,k,v,out}_proj``,
  ``mlp.fc1/fc2``), as ``lora_te_``/``lora_te1_`` (first encoder), ``lora_te2_`` (second) kohya names or
  ``text_encoder[_2].text_model.encoder.layers.N.<proj>`` — the ``text_model.`` root is required. The
  second encoder's ``text_projection`` only as ``lora_te2_text_projection``.
* Tensor spellings: ``lora_up/lora_down``, ``lora_A/lora_B``, ``lora.up/lora.down``, ``_lora.up/_lora.down``,
  ``lora_linear_layer.up/down``. Alpha only from a ``<name>.alpha`` tensor (never metadata); without
  one the scale is 1.
"""

from __future__ import annotations

import re

from studio.export.consumers.layout import ModelLayout
from studio.export.consumers.rules import (
    ATTN_PROCESSOR_PAIR,
    DIFFUSERS_PAIR,
    KOHYA_PAIR,
    LINEAR_LAYER_PAIR,
    PEFT_PAIR,
    KeyMatch,
    match_keys,
)

NAME = "ComfyUI"
PAIRS = (KOHYA_PAIR, ATTN_PROCESSOR_PAIR, PEFT_PAIR, DIFFUSERS_PAIR, LINEAR_LAYER_PAIR)
_ENCODER_PROJECTION = re.compile(r"^text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")


def _processor_spelling(path: str) -> str:
    spelled = path.replace(".to_", ".processor.to_")
    return spelled[:-2] if spelled.endswith(".to_out.0") else spelled


def lora_names(layout: ModelLayout) -> dict[str, tuple[str, str]]:
    """Every name ComfyUI maps to a layer of this model."""
    from studio.families.sdxl.names import sgm_unet_name

    names: dict[str, tuple[str, str]] = {}
    for module in layout.modules:
        if module.component == "unet":
            original = sgm_unet_name(module.path, layout.unet_config)
            names[f"lora_unet_{original.replace('.', '_')}"] = module.key
            names[f"diffusion_model.{original}"] = module.key
            names[f"lora_unet_{module.path.replace('.', '_')}"] = module.key
            names[_processor_spelling(module.path)] = module.key
            names[f"unet.{_processor_spelling(module.path)}"] = module.key
        elif _ENCODER_PROJECTION.match(module.path):
            names[f"{module.component}.{module.path}"] = module.key
            names[layout.family.kohya_lora_name(module.component, module.path)] = module.key
            if module.component == "text_encoder":  # the first encoder also answers to lora_te_ and lora_te1_
                flat = module.path.replace(".", "_")
                names[f"lora_te_{flat}"] = module.key
                names[f"lora_te1_{flat}"] = module.key
        elif module.component == "text_encoder_2" and module.path == "text_projection":
            names["lora_te2_text_projection"] = module.key
    return names


def match(keys: list[str], layout: ModelLayout) -> KeyMatch:
    return match_keys(NAME, keys, lora_names(layout), PAIRS)
