"""The kohya / webui LoRA format that AUTOMATIC1111, Forge and ComfyUI load.

One ``.safetensors``: per adapted module ``<name>.lora_down.weight`` [rank, in(, k, k)],
``<name>.lora_up.weight`` [out, rank(, 1, 1)] and ``<name>.alpha`` (scale = alpha / rank), where
``<name>`` is a prefix plus the module path with ``.`` replaced by ``_``. SD1.x/2.x UNets keep
diffusers' module names (sd-scripts trains those on the diffusers UNet); SDXL's use the original SGM
block names and ``lora_te1_``/``lora_te2_`` (``studio.families.sdxl.names``); text encoders are named
from CLIP's ``text_model.`` root. Training facts go into ``ss_*`` and ``modelspec.*`` metadata.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import torch

from studio.atomic import save_safetensors
from studio.errors import StudioError
from studio.export.lora_weights import LoraWeights


def kohya_name(component: str, path: str, family, unet_config: Any = None) -> str:
    """``lora_unet_down_blocks_0_..._to_q`` / ``lora_te_text_model_encoder_layers_0_self_attn_q_proj``:
    the family's names (:meth:`studio.families.base.ModelFamily.kohya_lora_name`; SDXL's depend on the
    UNet's block layout: pass its ``unet_config``)."""
    return family.kohya_lora_name(component, path, unet_config)


def kohya_state_dict(weights: LoraWeights, family, unet_config: Any = None) -> dict[str, torch.Tensor]:
    if family.fused_kohya_layout:  # Flux: BFL's names with fused projections (the family writes them)
        return family.kohya_state(weights.modules, unet_config)
    state: dict[str, torch.Tensor] = {}
    for module in weights.modules:
        name = kohya_name(module.component, module.path, family, unet_config)
        if f"{name}.alpha" in state:
            raise StudioError(f"Two LoRA modules map to the same kohya name {name}.")
        state[f"{name}.lora_down.weight"] = module.down
        state[f"{name}.lora_up.weight"] = module.up
        state[f"{name}.alpha"] = torch.tensor(float(module.alpha), dtype=torch.float32)
    return state


def kohya_metadata(weights: LoraWeights, family, info: dict[str, Any]) -> dict[str, str]:
    """sd-scripts' ``ss_*`` keys and Stability's ``modelspec.*`` keys (all values are strings)."""
    ranks = weights.ranks
    alphas = sorted({m.alpha for m in weights.modules})
    resolution = int(info.get("resolution") or family.default_resolution)
    has_conv = any(m.down.ndim == 4 and m.down.shape[-1] > 1 for m in weights.modules)
    metadata = {
        "ss_network_module": family.kohya_network_module,
        "ss_network_dim": str(max(ranks)),
        "ss_network_alpha": _number(alphas[-1]),
        "ss_base_model_version": family.kohya_base_model_version,
        "ss_v2": str(family.kohya_v2),
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_output_name": str(info.get("title", "lora")),
        "ss_training_comment": str(info.get("comment", "exported by Studio")),
        "ss_max_train_steps": str(info.get("steps", "")),
        "ss_learning_rate": str(info.get("learning_rate", "")),
        "ss_network_args": "{}",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": family.modelspec_architecture,
        "modelspec.implementation": "diffusers",
        "modelspec.title": str(info.get("title", "lora")),
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": dt.date.today().isoformat(),
    }
    if info.get("trigger_phrase"):
        metadata["modelspec.trigger_phrase"] = str(info["trigger_phrase"])
    if info.get("description"):
        metadata["modelspec.description"] = str(info["description"])
    if len(ranks) > 1 or has_conv:
        args = {"conv_dim": str(max(ranks)), "conv_alpha": _number(alphas[-1])}
        metadata["ss_network_args"] = json.dumps(args)
    return metadata


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def save_kohya_lora(weights: LoraWeights, path: Path, family, info: dict[str, Any], unet_config: Any = None) -> Path:
    """Write the kohya file; ``unet_config`` is required for SDXL (see :func:`kohya_name`)."""
    state = kohya_state_dict(weights, family, unet_config)
    save_safetensors(state, path, metadata=kohya_metadata(weights, family, info))
    return path


def is_kohya_state(keys: list[str]) -> bool:
    return bool(keys) and all(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys)
