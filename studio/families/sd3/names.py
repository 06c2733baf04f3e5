"""SD3/3.5's kohya/ComfyUI LoRA layout: Stability's original MMDiT names (``joint_blocks.N.x_block`` /
``context_block``), with query, key and value fused into one ``qkv`` module.

ComfyUI places every ``lora_unet_<original weight name with _>`` on that whole weight (its generic rule for
any diffusion model), so a fused module's LoRA is written as in :mod:`studio.families.flux.names`: the
members' downs stacked, their ups block-diagonal (each at its output rows and its own rank columns, zeros
for a member without a LoRA), every member padded to one rank, the scale folded into the ups (alpha = rank).
The last block's ``context_block.adaLN_modulation.1`` and the final layer's modulation hold (shift, scale)
where diffusers holds (scale, shift): their halves are swapped. CLIP-L and CLIP-G keep ``lora_te1_`` /
``lora_te2_``. Unfused modules (the 2×2 patch-embedding convolution included) are written as they are.
"""

from __future__ import annotations

from typing import Any

import torch

from studio.errors import StudioError
from studio.families.fused_lora import stack_members, swap_halves

PREFIX = "transformer_blocks."
GROUPS = {  # original module inside joint_blocks.N -> diffusers members (output order)
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
    "x_block.attn.proj": ("attn.to_out.0",),
    "context_block.attn.proj": ("attn.to_add_out",),
    "x_block.attn2.proj": ("attn2.to_out.0",),
    "x_block.mlp.fc1": ("ff.net.0.proj",),
    "x_block.mlp.fc2": ("ff.net.2",),
    "context_block.mlp.fc1": ("ff_context.net.0.proj",),
    "context_block.mlp.fc2": ("ff_context.net.2",),
    "x_block.adaLN_modulation.1": ("norm1.linear",),
    "context_block.adaLN_modulation.1": ("norm1_context.linear",),
}
OUTER = {
    "context_embedder": "context_embedder",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
    "x_embedder.proj": "pos_embed.proj",  # the patch embedding (a 2×2 convolution: its LoRA keeps conv shapes)
}


def place(path: str, config: Any) -> tuple[str, tuple[str, ...], int, bool]:
    """A diffusers SD3 transformer module's original name, the members fused there, its index among them,
    and whether its halves are swapped there."""
    last = int(config.num_layers) - 1
    if path.startswith(PREFIX):
        index, _, rest = path[len(PREFIX):].partition(".")
        for name, members in GROUPS.items():
            if rest in members:
                swapped = int(index) == last and rest == "norm1_context.linear"
                return (f"joint_blocks.{index}.{name}", tuple(f"{PREFIX}{index}.{m}" for m in members),
                        members.index(rest), swapped)
    for name, member in OUTER.items():
        if path == member:
            return name, (member,), 0, member == "norm_out.linear"
    raise StudioError(f"SD3's kohya layout has no place for a LoRA on transformer module '{path}'.")


def _sizes(members: tuple[str, ...], config: Any) -> list[int] | None:
    if len(members) == 1:
        return None
    return [int(config.num_attention_heads) * int(config.attention_head_dim)] * len(members)


def kohya_sd3_state(modules: list, config: Any, kohya_te_name) -> dict[str, torch.Tensor]:
    """The kohya/ComfyUI state of LoRA ``modules`` (:class:`studio.export.lora_weights.LoraModule`)."""
    state: dict[str, torch.Tensor] = {}
    groups: dict[str, tuple[tuple[str, ...], dict[int, Any]]] = {}
    for module in modules:
        if module.component != "transformer":
            name = kohya_te_name(module.component, module.path)
            state |= {f"{name}.lora_down.weight": module.down, f"{name}.lora_up.weight": module.up,
                      f"{name}.alpha": torch.tensor(float(module.alpha))}
            continue
        name, members, slot, _ = place(module.path, config)
        groups.setdefault(name, (members, {}))[1][slot] = module
    for name, (members, chosen) in groups.items():
        stem = "lora_unet_" + name.replace(".", "_")
        if len(members) == 1:  # nothing fused: the module's own factors (convolutions keep their shapes)
            member = chosen[0]
            member_up = member.up.float() * member.scale
            if place(member.path, config)[3]:
                member_up = swap_halves(member_up)
            state[f"{stem}.lora_down.weight"] = member.down
            state[f"{stem}.lora_up.weight"] = member_up.to(member.up.dtype)
            state[f"{stem}.alpha"] = torch.tensor(float(member.rank))
            continue
        sizes = _sizes(members, config) or [next(iter(chosen.values())).up.shape[0]]
        for suffix, tensor in stack_members(chosen, sizes, lambda member: place(member.path, config)[3]).items():
            state[f"{stem}.{suffix}"] = tensor
    return state


def read_kohya_sd3_state(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Each transformer module's update (diffusers path -> ``scale · up @ down``) from a kohya SD3 file:
    the inverse of :func:`kohya_sd3_state`, for verification."""
    stems = {f"lora_unet_joint_blocks_{i}_{name.replace('.', '_')}": tuple(f"{PREFIX}{i}.{m}" for m in members)
             for i in range(int(config.num_layers)) for name, members in GROUPS.items()}
    stems |= {"lora_unet_" + name.replace(".", "_"): (member,) for name, member in OUTER.items()}
    deltas: dict[str, torch.Tensor] = {}
    for key in state:
        if not key.startswith("lora_unet_") or not key.endswith(".lora_down.weight"):
            continue
        stem = key[: -len(".lora_down.weight")]
        if stem not in stems:
            raise StudioError(f"{stem}: not a module of this SD3 transformer.")
        members = stems[stem]
        down, up = state[key].double(), state[f"{stem}.lora_up.weight"].double()
        scale = float(state[f"{stem}.alpha"]) / down.shape[0] if f"{stem}.alpha" in state else 1.0
        full = (scale * up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])
        row = 0
        for path, size in zip(members, _sizes(members, config) or [full.shape[0]], strict=True):
            part = full[row: row + size]
            if place(path, config)[3]:
                part = swap_halves(part)
            if part.abs().max() > 0:
                deltas[path] = part
            row += size
    return deltas


def diffusers_state_from_kohya(state: dict[str, torch.Tensor], pipe, family) -> dict[str, torch.Tensor]:
    """A kohya SD3 file as a diffusers LoRA state dict (``transformer.<path>.lora_A/B.weight``, scale folded
    into B), for loaders that read only diffusers' names: each fused module's members get their own rows of
    the down factor and their block of the up factor back; text-encoder names are matched against
    ``pipe``'s modules (``family.kohya_lora_name``)."""
    config = pipe.transformer.config
    stems = {f"lora_unet_joint_blocks_{i}_{name.replace('.', '_')}": tuple(f"{PREFIX}{i}.{m}" for m in members)
             for i in range(int(config.num_layers)) for name, members in GROUPS.items()}
    stems |= {"lora_unet_" + name.replace(".", "_"): (member,) for name, member in OUTER.items()}
    for component in ("text_encoder", "text_encoder_2"):
        model = getattr(pipe, component, None)
        for path, module in (model.named_modules() if model is not None else []):
            if isinstance(module, torch.nn.Linear):
                stems[family.kohya_lora_name(component, path)] = (family.diffusers_lora_key(component, path),)
    out: dict[str, torch.Tensor] = {}
    for key, down in state.items():
        if not key.endswith(".lora_down.weight"):
            continue
        stem = key[: -len(".lora_down.weight")]
        if stem not in stems:
            raise StudioError(f"{stem}: not a module of this SD3 model.")
        up = state[f"{stem}.lora_up.weight"]
        scale = float(state[f"{stem}.alpha"]) / down.shape[0] if f"{stem}.alpha" in state else 1.0
        members = stems[stem]
        rank = down.shape[0] // len(members)
        sizes = _sizes(members, config) if stem.startswith("lora_unet_") else None
        row = 0
        for slot, (path, size) in enumerate(zip(members, sizes or [up.shape[0]], strict=True)):
            part_up = up[row: row + size, slot * rank: (slot + 1) * rank].float() * scale
            row += size
            if not part_up.abs().max() > 0:
                continue  # a member the LoRA leaves alone
            if stem.startswith("lora_unet_") and place(path, config)[3]:
                part_up = swap_halves(part_up)
            name = f"transformer.{path}" if stem.startswith("lora_unet_") else path
            out[f"{name}.lora_A.weight"] = down[slot * rank: (slot + 1) * rank].float().contiguous()
            out[f"{name}.lora_B.weight"] = part_up.contiguous()
    return out
