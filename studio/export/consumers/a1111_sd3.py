"""AUTOMATIC1111's (1.10+) reading of an SD3 LoRA or LyCORIS file, restated.

A1111 runs SD3 with its port of Stability's reference code (``modules/models/sd3/``) and reads LoRA files with
its built-in extension (``extensions-builtin/Lora``). Checked against its source (v1.10, the current release):

* **The model.** ``sd3_impls.BaseModel`` builds ``mmdit.MMDiT`` from the checkpoint's widths (hidden size
  64 · depth) with neither QK norms nor the second attention (``x_block.attn2``): that is SD3 medium. SD3.5
  medium and large are not supported (issue #16590 open; #16621: an SD3.5 medium checkpoint fails to load,
  SD3.5 large loads and draws noise), so a LoRA for an SD3.5 model has no model to act on.
* **Key split.** ``networks.load_network``: the SD3 model has ``diffusers_weight_mapping``
  (``sd3_model.SD3Inferencer``), so every key is split at its *last two* dots
  (``key.rsplit(".", 2)``). A key with only one dot (``<name>.alpha``, ``.dora_scale``, ``.hada_w1_a``…) raises
  ``ValueError``, which ``load_networks`` reports and then skips the whole file (issue #16317, open).
* **Names.** The part before the split is looked up (``network_layer_mapping``: every module of the MMDiT as
  ``diffusion_model_<original name with _>``; the text encoders as ``clip_l_transformer_…``/``clip_g_transformer_…``)
  after, in turn: the diffusers map (``transformer.transformer_blocks.N.attn.to_q/k/v`` to
  ``…_x_block_attn_qkv_{q,k,v}_proj``, ``attn.to_out.0`` to ``…_x_block_attn_proj``; its ``add_*_proj`` entries are
  spelled ``…_context_block.attn_qkv_…`` with a dot, and ``add_out_proj.0`` is no diffusers module, so neither ever
  matches), stripping a ``_q/_k/_v_proj`` suffix (``re_x_proj``), and replacing ``lora_unet`` by
  ``diffusion_model``. ``lora_te1_text_model`` becomes ``0_transformer_text_model`` or ``transformer_text_model``,
  SD1/SDXL's names, which SD3's encoders do not have: text-encoder modules are dropped.
* **Tensors.** ``network_lora.ModuleTypeLora``: ``lora_up``/``lora_down`` or ``lora_B``/``lora_A`` (``.weight``);
  a name whose tensors no module type accepts stops the load (``AssertionError``).
* **Applying.** ``networks.network_apply_weights``: a module under the layer's own name updates the whole weight
  (a fused ``qkv`` too: the ``QkvLinear`` test there looks at the network module, never the layer); otherwise a
  ``QkvLinear`` takes ``_q_proj``, ``_k_proj`` and ``_v_proj`` modules only all three together, each on its third
  of the rows, and ignores them otherwise. Scale ``alpha / rank``, or 1 without an alpha (``network.py``).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from studio.export.consumers.flow_rules import Slot, original_weights
from studio.export.consumers.layout import ModelLayout
from studio.export.consumers.rules import KeyMatch

A1111 = "A1111"
_X_PROJ = re.compile(r"^(.*)_([qkv])_proj$")
_MEMBERS = ("q", "k", "v")
_PAIRS = (("lora_down.weight", "lora_up.weight"), ("lora_A.weight", "lora_B.weight"))
_ENCODERS = {"text_encoder": "clip_l_transformer_", "text_encoder_2": "clip_g_transformer_"}


def runs_model(config: Any) -> bool:
    """Whether A1111's MMDiT is this model: SD3 medium (no QK norms, no second attention)."""
    return not getattr(config, "qk_norm", None) and not tuple(getattr(config, "dual_attention_layers", ()) or ())


def layer_names(layout: ModelLayout) -> dict[str, str]:
    """A1111's ``network_layer_mapping`` names of the layers a LoRA can adapt, and our target for each."""
    names = {"diffusion_model_" + target.replace(".", "_"): target for target in original_weights(layout)
             if ".attn2." not in target}
    for module in layout.modules:
        prefix = _ENCODERS.get(module.component)
        if prefix:
            names[prefix + module.path.replace(".", "_")] = f"{module.component}:{module.key[1]}"
    return names


def _diffusers_map(depth: int) -> dict[str, str]:
    mapping = {}
    for i in range(depth):
        block = f"transformer.transformer_blocks.{i}.attn"
        for member in _MEMBERS:
            mapping[f"{block}.to_{member}"] = f"diffusion_model_joint_blocks_{i}_x_block_attn_qkv_{member}_proj"
            mapping[f"{block}.add_{member}_proj"] = f"diffusion_model_joint_blocks_{i}_context_block.attn_qkv_{member}_proj"
        mapping[f"{block}.to_out.0"] = f"diffusion_model_joint_blocks_{i}_x_block_attn_proj"
        mapping[f"{block}.add_out_proj.0"] = f"diffusion_model_joint_blocks_{i}_context_block_attn_proj"
    return mapping


def _lookup(stem: str, layers: dict[str, str], mapping: dict[str, str]) -> tuple[str, str | None] | None:
    """(network key, q/k/v member or None) for a key's name part, as ``load_network`` resolves it."""
    key = mapping.get(stem, stem)
    if key in layers:
        return key, None
    member = _X_PROJ.match(key)
    if member and member.group(1) in layers:
        return key, member.group(2)
    if "lora_unet" in stem and stem.replace("lora_unet", "diffusion_model") in layers:
        return stem.replace("lora_unet", "diffusion_model"), None
    return None


def match(keys: list[str], layout: ModelLayout) -> KeyMatch:
    """The modules A1111 would apply from a file on this SD3 model: ``modules`` maps a :class:`Slot` to the
    (down, up) keys, as :func:`studio.export.consumers.flow_rules.applied_updates` reads them."""
    result = KeyMatch(A1111)
    one_dot = sorted(key for key in keys if key.count(".") < 2)
    if one_dot:
        result.rejected = (f"{len(one_dot)} keys with a single dot (e.g. {one_dot[0]}): A1111 splits an SD3 LoRA's keys at "
                           "their last two dots and fails on these with ValueError, loading nothing (issue #16317)")
        result.dropped = sorted(keys)
        return result
    layers = layer_names(layout)
    mapping = _diffusers_map(int(layout.unet_config.num_layers))
    groups: dict[str, dict[str, str]] = {}
    members: dict[str, str | None] = {}
    for key in keys:
        stem, first, second = key.rsplit(".", 2)
        place = _lookup(stem, layers, mapping)
        if place is None:
            result.dropped.append(key)
            continue
        members[place[0]] = place[1]
        groups.setdefault(place[0], {})[f"{first}.{second}"] = key
    pairs: dict[str, tuple[str, str]] = {}
    for name, parts in groups.items():
        pair = next(((parts[d], parts[u]) for d, u in _PAIRS if d in parts and u in parts), None)
        if pair is None:
            result.rejected = f"{name}: no module type takes {sorted(parts)} (AssertionError, nothing loads)"
            result.dropped = sorted(keys)
            return result
        pairs[name] = pair
        result.dropped += [k for k in parts.values() if k not in pair]
    hidden = 64 * int(layout.unet_config.num_layers)  # A1111 sizes MMDiT as ComfyUI does; chunk(3) of qkv
    for name, pair in pairs.items():
        member = members[name]
        if member is None:
            result.modules[Slot(layers[name])] = pair
            continue
        fused = name[: -len(f"_{member}_proj")]
        if fused in groups or not all(f"{fused}_{m}_proj" in groups for m in _MEMBERS):
            result.dropped += list(pair)  # a QkvLinear takes q, k and v only together (and not beside its own module)
            continue
        result.modules[Slot(layers[fused], _MEMBERS.index(member) * hidden, hidden)] = pair
    result.dropped = sorted(result.dropped)
    return result


def a1111_sd3_report(state: dict[str, torch.Tensor], weights, layout: ModelLayout) -> dict[str, Any]:
    """A1111's verdict on an SD3 LoRA file (kohya or diffusers layout)."""
    from studio.export.consumers.flow_rules import report_from_match

    if not runs_model(layout.unet_config):
        return no_sd35_model()
    return report_from_match(match(list(state), layout), state, weights, layout)


def a1111_sd3_lycoris_report(state: dict[str, torch.Tensor], layout: ModelLayout) -> dict[str, Any]:
    """A1111's verdict on an SD3 LyCORIS file (DoRA, LoHa): every such file has single-dot keys
    (``.alpha``, ``.dora_scale``, ``.hada_w1_a``…), on which A1111's SD3 key split fails."""
    if not runs_model(layout.unet_config):
        return no_sd35_model()
    result = match(list(state), layout)
    if result.rejected:
        return {"proof": "key rules", "loads": "refused", "modules_loaded": 0, "refused": result.rejected}
    raise ValueError("a LyCORIS file without single-dot keys: not a layout Studio writes")


NO_SD35_MODEL = ("A1111 (1.10) builds SD3 medium's MMDiT only (no QK norms, no second attention): SD3.5 models do "
                 "not run there (issues #16590, #16621)")


def no_sd35_model() -> dict[str, Any]:
    return {"proof": "key rules", "loads": "none", "modules_loaded": 0,
            "why": f"{NO_SD35_MODEL}, so nothing of an SD3.5 LoRA is applied. On SD3 medium it would also refuse any "
                   "file with '.alpha' keys (ValueError in its SD3 key split, issue #16317)"}


def a1111_sd3_checkpoint_verdict(config: Any) -> dict[str, Any]:
    """A1111's verdict on an SD3 all-in-one checkpoint of a transformer with ``config``: none for SD3.5 (A1111
    has no model to build for it); an SD3 medium checkpoint loads through A1111's port of SAI's code, whose
    loading rules are not restated here, so no claim either way."""
    if not runs_model(config):
        return {"proof": "key rules", "loads": "none", "why": f"{NO_SD35_MODEL}: an SD3.5 checkpoint cannot be loaded"}
    return {"proof": "none", "loads": "not checked",
            "why": "A1111 1.10+ loads SD3 medium checkpoints with its own port of SAI's code; its rules are not "
                   "restated here: no claim either way"}


__all__ = ["A1111", "NO_SD35_MODEL", "a1111_sd3_checkpoint_verdict", "a1111_sd3_lycoris_report", "a1111_sd3_report", "layer_names", "match", "no_sd35_model", "runs_model"]
