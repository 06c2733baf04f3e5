"""ComfyUI's and Forge's LoRA key rules for the flow families (Flux.1, SD3/3.5), restated, and the update
each of them would apply from a file.

Both tools keep Flux and SD3 in the *original* layout (Black Forest Labs' ``double_blocks`` /
``single_blocks``; Stability's MMDiT ``joint_blocks.N.x_block`` / ``context_block``), where query, key and
value are one fused ``qkv`` weight (Flux's single blocks also fuse the MLP input: ``linear1``). What they
accept (ComfyUI ``comfy/lora.py`` ``model_lora_keys_unet``/``_clip`` with ``comfy/utils.py``
``flux_to_diffusers``/``mmdit_to_diffusers``; Forge's copy of them in ``packages_3rdparty/comfyui_lora_collection``):

* **Original names, whole weight.** For every weight ``W`` of the diffusion model: ``lora_unet_<W's name
  with _ for .>`` and ``diffusion_model.<W's name>``. The update ``scale · up @ down`` is added to the whole
  fused weight (so a fused LoRA must be block-diagonal to leave other members alone).
* **diffusers names, a slice.** ComfyUI: ``transformer.<diffusers path>`` (Flux also ``lora_transformer_``,
  ``lycoris_`` + the path with ``_``, and the bare path; SD3 also ``base_model.model.<path>``,
  ``lora_transformer_``, ``lycoris_``). Each diffusers module lands on rows of its fused weight: Flux's
  ``to_q``/``to_k``/``to_v`` at 0, ``hidden``, ``2·hidden`` (``hidden`` rows each) of ``img_attn.qkv`` or, in a
  single block, of ``linear1``, whose ``proj_mlp`` rows start at ``3·hidden`` (``4·hidden`` rows); ``add_*_proj``
  on ``txt_attn.qkv`` (SD3: ``x_block.attn.qkv`` / ``context_block.attn.qkv``, ``hidden = 64 · depth``). The
  final modulation (``norm_out.linear``; SD3 also the last block's ``norm1_context``) has (scale, shift)
  where the original has (shift, scale): the update's halves are swapped before it is added. SD3's
  second attention (``attn2``, SD3.5 medium) has no diffusers name there. **Forge** maps diffusers names
  for Flux (``transformer.`` only) and has SD3's mapping commented out.
* **Text encoders**: CLIP-L's six projections per layer as ``lora_te_``/``lora_te1_`` or
  ``text_encoder.text_model.encoder.layers.N.<proj>``; CLIP-G's (SD3) as ``lora_te2_`` or
  ``text_encoder_2.text_model.…``.
* **kohya sd-scripts** (``networks/lora_flux.py``, ``lora_sd3.py``): kohya names on the whole original weight
  only, not every module (:mod:`.flow_sd_scripts`); AUTOMATIC1111: no Flux model, SD3 in :mod:`.a1111_sd3`.
* **Tensors**: ``lora_up``/``lora_down``, ``lora_B``/``lora_A``, ``lora.up``/``lora.down``; alpha only from a
  ``<name>.alpha`` tensor (scale = alpha / rank, 1 without one). Forge refuses a file with more than 12
  keys it cannot place.

The update each tool would make is compared, target by target, with what the LoRA means (Studio's own
placement: :mod:`studio.families.flux.names`, :mod:`studio.families.sd3.names`) on random probe vectors,
so real-width layouts cost no full ``[out, in]`` products.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any

import torch

from studio.export.consumers.layout import ModelLayout
from studio.export.consumers.rules import (
    DIFFUSERS_PAIR,
    KOHYA_PAIR,
    PEFT_PAIR,
    KeyMatch,
    loads_verdict,
    match_keys,
)
from studio.export.lora_weights import LoraWeights, module_key

COMFYUI = "ComfyUI"
FORGE = "Forge"
FORGE_MAX_UNMATCHED = 12
PAIRS = (KOHYA_PAIR, PEFT_PAIR, DIFFUSERS_PAIR)
SD_SCRIPTS = "kohya sd-scripts"  # its rules: studio.export.consumers.flow_sd_scripts
FLOW_KEY_RULE_CONSUMERS = (COMFYUI, FORGE)  # a kohya file must load fully in these (Studio's export refuses otherwise)
REPORTED_CONSUMERS = (*FLOW_KEY_RULE_CONSUMERS, SD_SCRIPTS)  # every consumer whose rules give a verdict here
PROBES = 3
_ENCODER_PROJECTION = re.compile(r"^text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")


@dataclass(frozen=True)
class Slot:
    """Where an update lands: a weight of the original layout (or ``component:path`` of a text encoder),
    from output row ``offset`` for ``rows`` rows (None: the whole weight), halves swapped or not."""

    target: str
    offset: int | None = None
    rows: int | None = None
    swap: bool = False


def _hidden(config: Any) -> int:
    return int(config.num_attention_heads) * int(config.attention_head_dim)


def flux_diffusers_slots(config: Any) -> dict[str, Slot]:
    """ComfyUI's place for each diffusers Flux module (``flux_to_diffusers``, restated)."""
    h = _hidden(config)
    slots: dict[str, Slot] = {}
    double = {"attn.to_out.0": "img_attn.proj", "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
              "attn.to_add_out": "txt_attn.proj", "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
              "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2"}
    for i in range(int(config.num_layers)):
        src, dst = f"transformer_blocks.{i}", f"double_blocks.{i}"
        for n, name in enumerate(("q", "k", "v")):
            slots[f"{src}.attn.to_{name}"] = Slot(f"{dst}.img_attn.qkv", n * h, h)
            slots[f"{src}.attn.add_{name}_proj"] = Slot(f"{dst}.txt_attn.qkv", n * h, h)
        for a, b in double.items():
            slots[f"{src}.{a}"] = Slot(f"{dst}.{b}")
    for i in range(int(config.num_single_layers)):
        src, dst = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        for n, name in enumerate(("q", "k", "v")):
            slots[f"{src}.attn.to_{name}"] = Slot(f"{dst}.linear1", n * h, h)
        slots[f"{src}.proj_mlp"] = Slot(f"{dst}.linear1", 3 * h, 4 * h)
        slots[f"{src}.norm.linear"] = Slot(f"{dst}.modulation.lin")
        slots[f"{src}.proj_out"] = Slot(f"{dst}.linear2")
    outer = {"proj_out": "final_layer.linear", "x_embedder": "img_in", "context_embedder": "txt_in",
             "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
             "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
             "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
             "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
             "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
             "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer"}
    for a, b in outer.items():
        slots[a] = Slot(b)
    slots["norm_out.linear"] = Slot("final_layer.adaLN_modulation.1", swap=True)
    return slots


def sd3_diffusers_slots(config: Any) -> dict[str, Slot]:
    """ComfyUI's place for each diffusers SD3 module (``mmdit_to_diffusers``, restated; no ``attn2``)."""
    depth = int(config.num_layers)
    h = 64 * depth  # as ComfyUI sizes it: equal to heads × head dim for SD3 medium/large and SD3.5
    block = {"norm1_context.linear": "context_block.adaLN_modulation.1", "attn.to_add_out": "context_block.attn.proj",
             "ff_context.net.0.proj": "context_block.mlp.fc1", "ff_context.net.2": "context_block.mlp.fc2",
             "norm1.linear": "x_block.adaLN_modulation.1", "attn.to_out.0": "x_block.attn.proj",
             "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2"}
    slots: dict[str, Slot] = {}
    for i in range(depth):
        src, dst = f"transformer_blocks.{i}", f"joint_blocks.{i}"
        for n, name in enumerate(("q", "k", "v")):
            slots[f"{src}.attn.to_{name}"] = Slot(f"{dst}.x_block.attn.qkv", n * h, h)
            slots[f"{src}.attn.add_{name}_proj"] = Slot(f"{dst}.context_block.attn.qkv", n * h, h)
        for a, b in block.items():
            slots[f"{src}.{a}"] = Slot(f"{dst}.{b}")
    last = f"transformer_blocks.{depth - 1}.norm1_context.linear"
    slots[last] = Slot(f"joint_blocks.{depth - 1}.context_block.adaLN_modulation.1", swap=True)
    outer = {"context_embedder": "context_embedder", "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
             "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2", "pos_embed.proj": "x_embedder.proj",
             "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
             "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2", "proj_out": "final_layer.linear"}
    for a, b in outer.items():
        slots[a] = Slot(b)
    slots["norm_out.linear"] = Slot("final_layer.adaLN_modulation.1", swap=True)
    return slots


def diffusers_slots(layout: ModelLayout) -> dict[str, Slot]:
    kind = layout.family.name
    slots = flux_diffusers_slots(layout.unet_config) if kind == "flux" else sd3_diffusers_slots(layout.unet_config)
    present = {m.path for m in layout.by_component(layout.family.denoiser_name)}
    return {path: slot for path, slot in slots.items() if path in present}


def original_weights(layout: ModelLayout) -> set[str]:
    """The original layout's Linear weights (names without ``.weight``) this model has: the targets of its
    diffusers modules, plus (SD3.5) the second attention's fused ``x_block.attn2.qkv`` / ``attn2.proj``."""
    targets = {slot.target for slot in diffusers_slots(layout).values()}
    for module in layout.by_component(layout.family.denoiser_name):
        match = re.match(r"^transformer_blocks\.(\d+)\.attn2\.(to_q|to_out\.0)$", module.path)
        if match:
            targets.add(f"joint_blocks.{match.group(1)}.x_block.attn2." + ("qkv" if match.group(2) == "to_q" else "proj"))
    return targets


def _text_names(layout: ModelLayout) -> dict[str, Slot]:
    names: dict[str, Slot] = {}
    for module in layout.modules:
        if module.component == layout.family.denoiser_name or not _ENCODER_PROJECTION.match(module.path):
            continue
        slot = Slot(f"{module.component}:{module.key[1]}")
        flat = module.path.replace(".", "_")
        names[f"{module.component}.{module.path}"] = slot
        if module.component == "text_encoder":
            names[f"lora_te_{flat}"] = slot
            names[f"lora_te1_{flat}"] = slot
        elif module.component == "text_encoder_2":  # CLIP-G (SD3); Flux's second encoder is T5 and never matches
            names[f"lora_te2_{flat}"] = slot
    return names


def consumer_names(consumer: str, layout: ModelLayout) -> dict[str, Slot]:
    """Every LoRA name ``consumer`` places on this Flux/SD3 model, and where."""
    if consumer == SD_SCRIPTS:
        from studio.export.consumers.flow_sd_scripts import sd_scripts_names

        return sd_scripts_names(layout, original_weights(layout), _text_names(layout))
    flux = layout.family.name == "flux"
    names: dict[str, Slot] = {}
    for target in original_weights(layout):
        names[f"lora_unet_{target.replace('.', '_')}"] = Slot(target)
        names[f"diffusion_model.{target}"] = Slot(target)
    if consumer == COMFYUI:
        prefixes = ("transformer.", "", "lora_transformer_", "lycoris_") if flux else (
            "transformer.", "base_model.model.", "lora_transformer_", "lycoris_")
    else:
        prefixes = ("transformer.",) if flux else ()
    for path, slot in diffusers_slots(layout).items():
        for prefix in prefixes:
            spelled = path.replace(".", "_") if prefix.endswith("_") else path
            names[prefix + spelled] = slot
    names.update(_text_names(layout))
    return names


def match(consumer: str, keys: list[str], layout: ModelLayout) -> KeyMatch:
    result = match_keys(consumer, keys, consumer_names(consumer, layout), PAIRS)  # module -> Slot here
    if consumer == FORGE and len(result.dropped) > FORGE_MAX_UNMATCHED:
        result.rejected = f"{len(result.dropped)} keys unmatched (Forge refuses a LoRA with more than {FORGE_MAX_UNMATCHED})"
    without_alpha = [down for slot, (down, _) in result.modules.items() if slot not in result.alphas]
    if consumer == SD_SCRIPTS and without_alpha:
        result.rejected = f"{len(without_alpha)} modules without an alpha tensor (sd-scripts reads one per module)"
    return result


def _probe(target: str, inputs: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(zlib.crc32(target.encode()))
    return torch.randn(inputs, PROBES, generator=generator, dtype=torch.float64)


def _swap(part: torch.Tensor) -> torch.Tensor:
    return torch.cat(part.chunk(2, dim=0)[::-1])


def _place(effects: dict[str, dict[int, torch.Tensor]], slot: Slot, part: torch.Tensor) -> None:
    rows = effects.setdefault(slot.target, {})
    offset = slot.offset or 0
    rows[offset] = rows[offset] + part if offset in rows else part


def _dense(parts: dict[int, torch.Tensor]) -> torch.Tensor:
    height = max(offset + part.shape[0] for offset, part in parts.items())
    out = torch.zeros(height, PROBES, dtype=torch.float64)
    for offset, part in parts.items():
        out[offset: offset + part.shape[0]] += part
    return out


def applied_updates(state: dict[str, torch.Tensor], result: KeyMatch) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The update the consumer adds to each target (on probes), and the names whose size does not fit
    the slice it writes them into (the tool would fail on them)."""
    effects: dict[str, dict[int, torch.Tensor]] = {}
    misfit = []
    for slot, (down_key, up_key) in result.modules.items():
        down, up = state[down_key].flatten(1).double(), state[up_key].flatten(1).double()
        alpha_key = result.alphas.get(slot)
        scale = float(state[alpha_key]) / down.shape[0] if alpha_key else 1.0
        part = scale * up @ (down @ _probe(slot.target, down.shape[1]))
        if slot.rows is not None and part.shape[0] != slot.rows:
            misfit.append(up_key)
            continue
        _place(effects, slot, _swap(part) if slot.swap else part)
    return {target: _dense(parts) for target, parts in effects.items()}, misfit


def intended_updates(weights: LoraWeights, layout: ModelLayout) -> dict[str, torch.Tensor]:
    """What the LoRA means, per target, by Studio's own placement (:mod:`studio.families.flux.names`,
    :mod:`studio.families.sd3.names`)."""
    denoiser = layout.family.denoiser_name
    effects: dict[str, dict[int, torch.Tensor]] = {}
    for module in weights.modules:
        if module.component == denoiser:
            slot = _studio_slot(module.path, layout)
        else:
            slot = Slot(f"{module.component}:{module_key(module.component, module.path)[1]}")
        down, up = module.down.flatten(1).double(), module.up.flatten(1).double()
        part = module.scale * up @ (down @ _probe(slot.target, down.shape[1]))
        _place(effects, slot, _swap(part) if slot.swap else part)
    return {target: _dense(parts) for target, parts in effects.items()}


def _studio_slot(path: str, layout: ModelLayout) -> Slot:
    if layout.family.name == "flux":
        from studio.families.flux.names import SWAPPED, group_of, member_sizes

        group, index = group_of(path)
        sizes = member_sizes(group, layout.unet_config)
        offset = sum(sizes[:index]) if sizes else None
        return Slot(group.name, offset, sizes[index] if sizes else None, path in SWAPPED)
    from studio.families.sd3.names import place

    name, members, index, swapped = place(path, layout.unet_config)
    if len(members) == 1:
        return Slot(name, swap=swapped)
    width = int(layout.unet_config.num_attention_heads) * int(layout.unet_config.attention_head_dim)
    return Slot(name, index * width, width, swapped)


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal updates; rows past the end of one of them (members without a LoRA) must be zero in the other."""
    rows = min(a.shape[0], b.shape[0])
    tail = a[rows:] if a.shape[0] > rows else b[rows:]
    return bool(torch.allclose(a[:rows], b[:rows], rtol=1e-5, atol=1e-7) and (tail.numel() == 0 or tail.abs().max() == 0))


def consumer_report(consumer: str, state: dict[str, torch.Tensor], weights: LoraWeights,
                    layout: ModelLayout) -> dict[str, Any]:
    """One consumer's verdict on one Flux/SD3 LoRA file, for export.json (see
    :func:`studio.export.consumers.consumer_report` for the fields)."""
    return report_from_match(match(consumer, list(state), layout), state, weights, layout)


def report_from_match(result: KeyMatch, state: dict[str, torch.Tensor], weights: LoraWeights,
                      layout: ModelLayout) -> dict[str, Any]:
    """The verdict from a consumer's matched modules (``modules``: :class:`Slot` -> (down key, up key)): the
    update it applies to every target compared with what the LoRA means there."""
    applied, misfit = applied_updates(state, result)
    intended = intended_updates(weights, layout)
    wrong = sorted(t for t in set(applied) | set(intended)
                   if t not in applied or t not in intended or not _equal(applied[t], intended[t]))
    missing = sorted(set(intended) - set(applied))
    report: dict[str, Any] = {
        "proof": "key rules",
        "modules_loaded": len(set(applied) & set(intended)) - len(set(wrong) - set(missing)),
        "modules_in_file": len(intended),
        "counted": "weights of the original layout (a fused qkv is one)",
        "keys_dropped": len(result.dropped) + len(misfit),
        "strength": "as trained" if not wrong else f"{len(wrong)} weights get another update",
    }
    if result.rejected:
        report["refused"] = result.rejected
    if wrong:
        report["wrong"] = wrong[:10]
    if result.dropped or misfit:
        report["dropped"] = (result.dropped + misfit)[:10]
    report["loads"] = loads_verdict(bool(result.rejected), bool(applied), bool(wrong or result.dropped or misfit))
    return report


def is_flow(family) -> bool:
    """Flux and SD3: transformer families whose consumers keep the original fused layout."""
    return family.name in ("flux", "sd3")


def flow_consumers(state: dict[str, torch.Tensor], weights: LoraWeights, layout: ModelLayout) -> dict[str, dict]:
    """Every consumer's verdict on a Flux/SD3 LoRA file: ComfyUI, Forge and sd-scripts by their rules; A1111 has
    no Flux model (:func:`studio.export.consumers.flow_sd_scripts.a1111_verdict`) and its SD3 rules are
    :mod:`studio.export.consumers.a1111_sd3`."""
    from studio.export.consumers.a1111_sd3 import A1111, a1111_sd3_report
    from studio.export.consumers.flow_sd_scripts import a1111_verdict

    verdicts = {name: consumer_report(name, state, weights, layout) for name in REPORTED_CONSUMERS}
    flux = layout.family.name == "flux"
    verdicts[A1111] = a1111_verdict(layout.family.name) if flux else a1111_sd3_report(state, weights, layout)
    return verdicts
