"""DoRA and LoHa of a Flux or SD3 run in the fused kohya/LyCORIS layout (BFL's / SAI's original names).

The flow families' consumers keep the original layout, where diffusers' ``to_q``/``to_k``/``to_v`` (and a
Flux single block's ``proj_mlp``) are one fused weight (:meth:`studio.families.base.ModelFamily.kohya_place`).
A fused module is written so that its update is exactly the members' updates stacked on the output axis:

* **DoRA**: the members' downs stacked and their ups block-diagonal (scale folded in, alpha = rank) as for
  LoRA (:mod:`studio.families.flux.names`), and ``dora_scale`` [rows, 1] per output row. ComfyUI/Forge
  normalise each row by the *base* row norm (:mod:`studio.export.lycoris`), so a trained member's rows hold
  peft's magnitude times ``(‖W‖ + eps) / ‖W + ΔW‖`` and an untrained member's rows ``‖W‖ + eps`` (no change).
* **LoHa**: ``ΔW = (w1a·w1b) ⊙ (w2a·w2b)`` is row-wise, so stacking rows commutes with the Hadamard product:
  ``hada_w1_a``/``hada_w2_a`` block-diagonal (scale folded into ``w1_a``), ``hada_w1_b``/``hada_w2_b``
  stacked, alpha = rank.
* **LoKr** cannot be fused: the stack of three Kronecker products is not one. A single-member module is
  written as it is; a fused one is refused, and the exporter never offers the
  layout for a LoKr run of these families (``stacks`` in :data:`studio.methods.ADAPTER_TYPES`).

Output halves the original holds swapped (Flux's final modulation, SD3's last context modulation) are
swapped in the written factors. Text encoders are not fused: their modules are written as for SD.
"""

from __future__ import annotations

from typing import Any

import torch

from studio.errors import StudioError
from studio.export.lycoris import DORA_EPS, AdapterModule, AdapterWeights, lycoris_tensors


def original_bases(denoiser: torch.nn.Module, weights: AdapterWeights, family, config: Any) -> dict[str, torch.Tensor]:
    """Every member's base weight (diffusers path -> float32 tensor) of each fused module the adapter touches."""
    paths = {m for module in weights.by_component(family.denoiser_name)
             for m in family.kohya_place(module.path, config).members}
    found = {}
    for path in sorted(paths):
        layer = denoiser.get_submodule(path)
        found[path] = getattr(layer, "base_layer", layer).weight.detach().float().cpu()
    return found


def fused_lycoris_state(weights: AdapterWeights, family, config: Any, member_bases: dict[str, torch.Tensor],
                        encoder_bases: dict[tuple[str, str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """The kohya/LyCORIS state of a flow-family adapter (see the module docstring)."""
    from studio.export.lora_weights import module_key

    state: dict[str, torch.Tensor] = {}
    groups: dict[str, tuple[Any, dict[int, AdapterModule]]] = {}
    for module in weights.modules:
        if module.component != family.denoiser_name:
            name = family.kohya_lora_name(module.component, module.path)
            base = encoder_bases.get(module_key(module.component, module.path))
            state |= {f"{name}.{k}": v for k, v in lycoris_tensors(module, base).items()}
            continue
        place = family.kohya_place(module.path, config)
        groups.setdefault(place.name, (place, {}))[1][place.slot] = module
    for name, (place, members) in groups.items():
        stem = "lora_unet_" + name.replace(".", "_")
        if place.sizes is None:
            (module,) = members.values()
            tensors = lycoris_tensors(module, member_bases.get(module.path))
            state |= {f"{stem}.{k}": v for k, v in (_swapped(tensors, module) if place.swapped else tensors).items()}
        elif weights.kind == "dora":
            state |= {f"{stem}.{k}": v for k, v in _fused_dora(place, members, member_bases).items()}
        elif weights.kind == "loha":
            state |= {f"{stem}.{k}": v for k, v in _fused_loha(place, members).items()}
        else:
            raise StudioError(f"{name} fuses {len(place.members)} modules; a {weights.kind} adapter on them cannot be "
                              "written as one module of that type (export the peft folders instead).")
    return state


def _halves(value: torch.Tensor) -> torch.Tensor:
    if value.shape[0] % 2:
        raise StudioError(f"cannot swap the output halves of a factor with {value.shape[0]} rows")
    return torch.cat(value.chunk(2, dim=0)[::-1]).contiguous()


def _swapped(tensors: dict[str, torch.Tensor], module: AdapterModule) -> dict[str, torch.Tensor]:
    """The tensors of a module whose original weight holds its output halves swapped."""
    rows = {"dora": ("lora_up.weight", "dora_scale"), "loha": ("hada_w1_a", "hada_w2_a")}.get(module.kind)
    if rows is None:  # LoKr: kron(w1, w2)'s row halves are w1's (rows of its first factor or of w1_a)
        rows = ("lokr_w1",) if "lokr_w1" in tensors else ("lokr_w1_a",)
    return {k: _halves(v) if k in rows else v for k, v in tensors.items()}


def _rows(place, slot: int) -> tuple[int, int]:
    start = sum(place.sizes[:slot])
    return start, start + place.sizes[slot]


def _fused_dora(place, members: dict[int, AdapterModule], bases: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    rank = max(m.rank for m in members.values())
    columns = next(iter(members.values())).tensors["lora_A"].shape[1]
    count = len(place.sizes)
    down = torch.zeros(rank * count, columns, dtype=torch.float32)
    up = torch.zeros(sum(place.sizes), rank * count, dtype=torch.float32)
    scale = torch.zeros(sum(place.sizes), dtype=torch.float64)
    for slot, path in enumerate(place.members):
        start, end = _rows(place, slot)
        base = bases[path].double()
        module = members.get(slot)
        if module is None:  # untouched rows: ComfyUI's ratio is exactly one
            scale[start:end] = base.norm(dim=1) + DORA_EPS
            continue
        a, b = module.tensors["lora_A"].double(), module.tensors["lora_B"].double() * module.scale
        down[slot * rank: slot * rank + module.rank] = a.float()
        up[start:end, slot * rank: slot * rank + module.rank] = b.float()
        adapted = base + b @ a
        magnitude = module.tensors["lora_magnitude_vector"].double()
        scale[start:end] = magnitude * (base.norm(dim=1) + DORA_EPS) / adapted.norm(dim=1)
    return {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(float(rank * count)),
            "dora_scale": scale.float().reshape(-1, 1).contiguous()}


def _fused_loha(place, members: dict[int, AdapterModule]) -> dict[str, torch.Tensor]:
    rank = max(m.rank for m in members.values())
    columns = next(iter(members.values())).tensors["hada_w1_b"].shape[1]
    count = len(place.sizes)
    out = {k: torch.zeros(sum(place.sizes), rank * count) for k in ("hada_w1_a", "hada_w2_a")}
    out |= {k: torch.zeros(rank * count, columns) for k in ("hada_w1_b", "hada_w2_b")}
    for slot, module in members.items():
        start, end = _rows(place, slot)
        cols = slice(slot * rank, slot * rank + module.rank)
        t = module.tensors
        out["hada_w1_a"][start:end, cols] = t["hada_w1_a"].float() * module.scale
        out["hada_w2_a"][start:end, cols] = t["hada_w2_a"].float()
        out["hada_w1_b"][cols] = t["hada_w1_b"].float()
        out["hada_w2_b"][cols] = t["hada_w2_b"].float()
    return out | {"alpha": torch.tensor(float(rank * count))}


def intended_weights(weights: AdapterWeights, family, config: Any, member_bases: dict[str, torch.Tensor],
                     encoder_bases: dict[tuple[str, str], torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base, adapted) weight of every original-layout target the adapter touches, as peft means it
    (float64): denoiser targets by their original names, text-encoder ones as ``component:path`` (the
    flow consumer rules' targets, :class:`studio.export.consumers.flow_rules.Slot`)."""
    from studio.export.lora_weights import module_key

    base_of: dict[str, torch.Tensor] = {}
    adapted: dict[str, torch.Tensor] = {}
    for module in weights.modules:
        if module.component != family.denoiser_name:
            key = module_key(module.component, module.path)
            target = f"{key[0]}:{key[1]}"
            base = encoder_bases[key].double()
            base_of[target], adapted[target] = base, base + module.delta(base)
            continue
        place = family.kohya_place(module.path, config)
        if place.name not in base_of:
            parts = [member_bases[p].double() for p in place.members]
            whole = torch.cat(parts) if len(parts) > 1 else parts[0]
            base_of[place.name] = _halves(whole) if place.swapped else whole
            adapted[place.name] = base_of[place.name].clone()
        base = member_bases[module.path].double()
        delta = module.delta(base)
        if place.swapped:
            delta = _halves(delta)
        start, end = _rows(place, place.slot) if place.sizes else (0, delta.shape[0])
        adapted[place.name][start:end] += delta
    return base_of, adapted
