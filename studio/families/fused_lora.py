"""One LoRA for a fused weight (qkv, Flux's linear1) from the LoRAs of the separate layers it fuses: the
layout BFL's and SAI's original checkpoints, and so ComfyUI, Forge and kohya, use for Flux and SD3.

The members are stacked block-diagonally: member ``i``'s down rows sit in rank block ``i`` and its up rows
in its own output rows, so the fused update ``up @ down`` equals each member's update on its rows and zero
elsewhere. Each member's scale is folded into its up matrix; the fused file's alpha is its rank (scale 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def swap_halves(value: torch.Tensor) -> torch.Tensor:
    """The two halves of the output rows exchanged (a modulation layer whose original order is (shift, scale)
    where diffusers has (scale, shift))."""
    return torch.cat(value.chunk(2, dim=0)[::-1])


def stack_members(members: dict[int, Any], sizes: list[int],
                  swapped: Callable[[Any], bool]) -> dict[str, torch.Tensor]:
    """``lora_down.weight``, ``lora_up.weight`` and ``alpha`` of the fused layer whose slots have ``sizes``
    output rows; ``members`` maps a slot to its LoRA module (a missing slot stays zero); a module for
    which ``swapped`` is true has its output halves exchanged."""
    rank = max(member.rank for member in members.values())
    some = next(iter(members.values()))
    down = torch.zeros(rank * len(sizes), some.down.shape[1], dtype=torch.float32)
    up = torch.zeros(sum(sizes), rank * len(sizes), dtype=torch.float32)
    row = 0
    for slot, size in enumerate(sizes):
        member = members.get(slot)
        if member is not None:
            member_up = member.up.float() * member.scale
            if swapped(member):
                member_up = swap_halves(member_up)
            down[slot * rank: slot * rank + member.rank] = member.down.float()
            up[row: row + size, slot * rank: slot * rank + member.rank] = member_up
        row += size
    return {"lora_down.weight": down.to(some.down.dtype), "lora_up.weight": up.to(some.up.dtype),
            "alpha": torch.tensor(float(down.shape[0]))}
