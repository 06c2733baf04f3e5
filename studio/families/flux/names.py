"""Flux's kohya/ComfyUI LoRA layout: Black Forest Labs' original module names, fused projections.

kohya sd-scripts (``networks/lora_flux.py``), Forge and ComfyUI name a Flux LoRA's transformer modules
by BFL's checkpoint (``lora_unet_double_blocks_0_img_attn_qkv``), where diffusers splits what BFL
fuses: ``img_attn.qkv`` is diffusers' ``attn.to_q``/``to_k``/``to_v`` stacked on the output axis,
and a single block's ``linear1`` is ``to_q``/``to_k``/``to_v``/``proj_mlp``. A fused module's LoRA is
written as one low-rank pair whose down rows are the members' downs stacked and whose up is
block-diagonal (each member's up at its output rows and its own rank columns; zeros for a member
without a LoRA), every member padded to one rank: the layout diffusers' own kohya-Flux reader
recognises as "sparse" and splits back exactly. Scales are folded into the up factors (alpha = rank).
CLIP-L's modules keep kohya's ``lora_te1_`` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from studio.families.fused_lora import stack_members, swap_halves

DOUBLE_PREFIX = "transformer_blocks."
SINGLE_PREFIX = "single_transformer_blocks."
# BFL module in a double block -> diffusers members (in output order)
DOUBLE_GROUPS = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_mod.lin": ("norm1_context.linear",),
}
SINGLE_GROUPS = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
OUTER = {  # modules outside the blocks
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",  # BFL holds (shift, scale), diffusers (scale, shift)
}
SWAPPED = {"norm_out.linear"}
MLP_RATIO = 4.0  # FluxSingleTransformerBlock's proj_mlp width / inner width


@dataclass(frozen=True)
class Group:
    """One BFL module and the diffusers modules (members) it fuses, in output order."""

    name: str  # BFL path, e.g. double_blocks.0.img_attn.qkv
    members: tuple[str, ...]  # diffusers paths


def group_of(path: str) -> tuple[Group, int]:
    """The BFL module a diffusers transformer module belongs to, and its place among the members."""
    for prefix, groups, bfl in ((DOUBLE_PREFIX, DOUBLE_GROUPS, "double_blocks."), (SINGLE_PREFIX, SINGLE_GROUPS, "single_blocks.")):
        if path.startswith(prefix):
            index, _, rest = path[len(prefix):].partition(".")
            for name, members in groups.items():
                if rest in members:
                    full = tuple(f"{prefix}{index}.{m}" for m in members)
                    return Group(f"{bfl}{index}.{name}", full), members.index(rest)
    for name, member in OUTER.items():
        if path == member:
            return Group(name, (member,)), 0
    from studio.errors import StudioError

    raise StudioError(f"Flux's kohya layout has no place for a LoRA on transformer module '{path}'.")


def member_sizes(group: Group, config: Any) -> list[int] | None:
    """Output rows of each member of a fused group, from the transformer's config (None: one member)."""
    if len(group.members) == 1:
        return None
    inner = int(config.num_attention_heads) * int(config.attention_head_dim)
    return [int(inner * MLP_RATIO) if path.endswith("proj_mlp") else inner for path in group.members]


def kohya_flux_state(modules: list, config: Any, kohya_te_name) -> dict[str, torch.Tensor]:
    """The kohya/ComfyUI state of ``modules`` (:class:`studio.export.lora_weights.LoraModule`); the
    transformer's ``config`` sizes the members of a fused module that carry no LoRA."""
    state: dict[str, torch.Tensor] = {}
    groups: dict[Group, dict[int, Any]] = {}
    for module in modules:
        if module.component != "transformer":
            name = kohya_te_name(module.component, module.path)
            state[f"{name}.lora_down.weight"] = module.down
            state[f"{name}.lora_up.weight"] = module.up
            state[f"{name}.alpha"] = torch.tensor(float(module.alpha))
            continue
        group, slot = group_of(module.path)
        groups.setdefault(group, {})[slot] = module
    for group, members in groups.items():
        sizes = member_sizes(group, config) or [next(iter(members.values())).up.shape[0]]
        name = "lora_unet_" + group.name.replace(".", "_")
        for suffix, tensor in stack_members(members, sizes, lambda member: member.path in SWAPPED).items():
            state[f"{name}.{suffix}"] = tensor
    return state


def read_kohya_flux_state(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Each transformer module's weight update (``scale · up @ down``, diffusers' path -> delta) from a
    kohya Flux file: the inverse of :func:`kohya_flux_state`, for verification."""
    paths: dict[str, Group] = {}
    for blocks, prefix, groups in ((config.num_layers, DOUBLE_PREFIX, DOUBLE_GROUPS),
                                   (config.num_single_layers, SINGLE_PREFIX, SINGLE_GROUPS)):
        for index in range(int(blocks)):
            for members in groups.values():
                group, _ = group_of(f"{prefix}{index}.{members[0]}")
                paths["lora_unet_" + group.name.replace(".", "_")] = group
    for name, member in OUTER.items():
        paths["lora_unet_" + name.replace(".", "_")] = Group(name, (member,))
    deltas: dict[str, torch.Tensor] = {}
    for key in state:
        if not key.startswith("lora_unet_") or not key.endswith(".lora_down.weight"):
            continue
        stem = key[: -len(".lora_down.weight")]
        group = paths[stem]
        down, up = state[key].double(), state[f"{stem}.lora_up.weight"].double()
        scale = float(state[f"{stem}.alpha"]) / down.shape[0] if f"{stem}.alpha" in state else 1.0
        full = scale * up @ down
        row = 0
        for path, size in zip(group.members, member_sizes(group, config) or [full.shape[0]], strict=True):
            part = full[row: row + size]
            if path in SWAPPED:
                part = swap_halves(part)
            if part.abs().max() > 0:
                deltas[path] = part
            row += size
    return deltas


# QK norms: diffusers module (inside a block) -> BFL parameter (inside the block)
DOUBLE_NORMS = {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
                "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm"}
SINGLE_NORMS = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}


def _norm_name(module: str) -> str | None:
    for prefix, norms, bfl in ((DOUBLE_PREFIX, DOUBLE_NORMS, "double_blocks."), (SINGLE_PREFIX, SINGLE_NORMS, "single_blocks.")):
        if module.startswith(prefix):
            index, _, rest = module[len(prefix):].partition(".")
            if rest in norms:
                return f"{bfl}{index}.{norms[rest]}.scale"
    return None


def bfl_transformer_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``FluxTransformer2DModel`` state dict in Black Forest Labs' original layout (what
    ``flux1-dev.safetensors`` holds and ComfyUI's *Load Diffusion Model* reads): fused qkv and linear1,
    QK norms as ``…norm.query_norm.scale``, the final modulation's (scale, shift) as BFL's (shift, scale)."""
    fused: dict[tuple[Group, str], dict[int, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        norm = _norm_name(module)
        if norm is not None:
            out[norm] = value
            continue
        group, slot = group_of(module)
        fused.setdefault((group, leaf), {})[slot] = value
    for (group, leaf), parts in fused.items():
        if len(parts) != len(group.members):
            from studio.errors import StudioError

            raise StudioError(f"{group.name}.{leaf}: the transformer lacks some of {group.members}.")
        value = torch.cat([parts[i] for i in range(len(group.members))])
        if group.members[0] in SWAPPED:
            value = swap_halves(value)
        out[f"{group.name}.{leaf}"] = value.contiguous()
    return out
