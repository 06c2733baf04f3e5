"""kohya sd-scripts' rules for Flux and SD3 LoRA files (``networks/lora_flux.py``, ``networks/lora_sd3.py``
``create_network_from_weights`` and ``load_weights``), restated; and AUTOMATIC1111's answer for these families.

sd-scripts builds its network from the file: every ``<name>.lora_down.weight`` gives a module's rank and
``<name>.alpha`` its alpha (read unconditionally: a module without one stops the load), then creates LoRA
modules only where its own model has a Linear (or, for SD3's patch embedding, a Conv2d) of that name, and
loads the file with ``strict=False``: any other key is dropped without a word. A module adds
``alpha / rank · up @ down`` to the *whole* original weight (a fused ``qkv`` or ``linear1`` too; its
``split_qkv`` option only changes how it trains). Names, all kohya spellings:

* **Flux** (``lora_flux``): ``lora_unet_`` + the Linear layers inside ``double_blocks.N`` / ``single_blocks.N``
  (``img_attn.qkv``, ``linear1``, ``img_mod.lin``, …) and the input layers its ``in_dims`` list
  (``img_in``, ``time_in``, ``vector_in``, ``guidance_in``, ``txt_in``); the final layer
  (``final_layer.linear``, ``final_layer.adaLN_modulation.1``) has no LoRA module there. CLIP-L as
  ``lora_te1_`` (``CLIPAttention``/``CLIPMLP`` layers), T5 as ``lora_te3_``.
* **SD3** (``lora_sd3``): ``lora_unet_`` + the layers inside ``joint_blocks.N.{x_block,context_block}``
  (``attn.qkv``, ``attn2.qkv``, ``mlp.fc1``, ``adaLN_modulation.1``, …) and its ``emb_dims`` list
  (``context_embedder``, ``t_embedder``, ``x_embedder`` (the patch conv), ``y_embedder``, ``final_layer``).
  CLIP-L ``lora_te1_``, CLIP-G ``lora_te2_``, T5 ``lora_te3_``.

LyCORIS files (DoRA, LoHa): ``create_network_from_weights`` sizes a module only from a ``<name>.lora_down`` key
(``modules_dim``), so a LoHa file (``hada_*``) creates no module and loads nothing (LyCORIS' own network module,
``--network_module lycoris.kohya``, reads it: :mod:`.lycoris_package`); a DoRA file's ``lora_down``/``lora_up``/
``alpha`` make plain LoRA modules and its ``dora_scale`` is left out by ``strict=False``: every weight gets
``W + ΔW`` without the magnitude.

AUTOMATIC1111 has no Flux model at all (Flux runs in its fork Forge), so it loads no Flux LoRA; its SD3 rules
are :mod:`.a1111_sd3`.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from studio.export.consumers.layout import ModelLayout
from studio.export.consumers.rules import KOHYA_PAIR, match_keys

NAME = "kohya sd-scripts"
A1111 = "A1111"
# Original-layout weights (no leaf) sd-scripts creates a LoRA module for, per family.
_MODULES = {
    "flux": re.compile(r"^((double|single)_blocks\.\d+\..+|img_in|txt_in|(time|vector|guidance)_in\.(in|out)_layer)$"),
    "sd3": re.compile(r"^(joint_blocks\.\d+\.(x|context)_block\..+|context_embedder|[ty]_embedder\.mlp\.[02]"
                      r"|x_embedder\.proj|final_layer\.(linear|adaLN_modulation\.1))$"),
}
_TEXT_PREFIXES = {"flux": {"text_encoder": "lora_te1_"}, "sd3": {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}}


def sd_scripts_names(layout: ModelLayout, original_weights: set[str], text_slots: dict[str, Any]) -> dict[str, Any]:
    """Every name sd-scripts creates a LoRA module for on this model, and where it lands: ``original_weights``
    are the model's fused weights (as :mod:`.flow_rules` finds them), ``text_slots`` the text-encoder names
    :mod:`.flow_rules` knows (only the kohya spellings with this family's prefixes are sd-scripts')."""
    from studio.export.consumers.flow_rules import Slot

    family = layout.family.name
    names: dict[str, Any] = {f"lora_unet_{t.replace('.', '_')}": Slot(t) for t in original_weights
                             if _MODULES[family].match(t)}
    prefixes = tuple(_TEXT_PREFIXES[family].values())
    names |= {name: slot for name, slot in text_slots.items() if name.startswith(prefixes)}
    return names


def a1111_verdict(family_name: str) -> dict[str, Any]:
    """AUTOMATIC1111's verdict on a Flux file (SD3's depends on the file: :mod:`.a1111_sd3`)."""
    if family_name != "flux":
        raise ValueError("A1111's SD3 verdict is studio.export.consumers.a1111_sd3's")
    return {"proof": "none", "loads": "none", "modules_loaded": 0,
            "why": "AUTOMATIC1111 has no Flux model (Flux runs in its fork Forge): it cannot load a Flux LoRA"}


def sd_scripts_lycoris_report(state: dict[str, torch.Tensor], layout: ModelLayout) -> dict[str, Any]:
    """sd-scripts' own network module (``lora_flux``/``lora_sd3``) on a Flux/SD3 LyCORIS file (DoRA, LoHa)."""
    from studio.export.consumers.flow_rules import consumer_names

    in_file = {key.split(".")[0] for key in state}
    result = match_keys(NAME, list(state), consumer_names(NAME, layout), (KOHYA_PAIR,))
    report: dict[str, Any] = {"proof": "key rules", "modules_loaded": len(result.modules), "modules_in_file": len(in_file),
                              "keys_dropped": len(result.dropped)}
    if result.dropped:
        report["dropped"] = result.dropped[:10]
    if not result.modules:
        return report | {"loads": "none", "why": "sd-scripts creates modules only from lora_down/lora_up/alpha keys; "
                                                 "LoHa needs --network_module lycoris.kohya (LyCORIS' own loader)"}
    without_alpha = [name for name in result.modules if name not in result.alphas]
    if without_alpha:
        return report | {"loads": "refused", "refused": f"{len(without_alpha)} modules without an alpha tensor"}
    scales = [key for key in result.dropped if key.endswith(".dora_scale")]
    report["loads"] = "partial" if result.dropped or len(result.modules) < len(in_file) else "all"
    if scales:
        report["strength"] = (f"another: dora_scale ignored on {len(scales)} modules (W + ΔW without the magnitude; "
                              "use --network_module lycoris.kohya or ComfyUI/Forge)")
    return report


__all__ = ["A1111", "NAME", "a1111_verdict", "sd_scripts_lycoris_report", "sd_scripts_names"]
