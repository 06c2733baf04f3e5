"""ComfyUI's and Forge's reading of a LyCORIS file (DoRA, LoKr, LoHa) on Flux and SD3, restated.

The module names each tool places are the flow LoRA rules' (:func:`.flow_rules.consumer_names`: original
names on whole weights, diffusers names on row slices); the tensors beside a name and their arithmetic are
the LyCORIS adapters' (:mod:`.lycoris_rules`: ``kron``, the Hadamard product, ``dora_scale`` over the
base rows). A file's verdict per tool: every key placed (Forge refuses a file with more than 12 it cannot
place), every factor fitting its target's shape, and, given the base weights, every target's adapted weight
equal to what the adapter means (:func:`studio.export.lycoris_fused.intended_weights`).
kohya sd-scripts' own network module reads none of LoHa and DoRA without its magnitude
(:func:`.flow_sd_scripts.sd_scripts_lycoris_report`); AUTOMATIC1111 has no Flux model and refuses these SD3 files
(:mod:`.a1111_sd3`).
"""

from __future__ import annotations

from typing import Any

import torch

from studio.export.consumers import PROOF_KEY_RULES, with_verdict
from studio.export.consumers.flow_rules import (
    FLOW_KEY_RULE_CONSUMERS,
    FORGE,
    FORGE_MAX_UNMATCHED,
    SD_SCRIPTS,
    consumer_names,
)
from studio.export.consumers.layout import ModelLayout
from studio.export.consumers.lycoris_rules import (
    ALL_ALGOS,
    COMFY_EPS,
    DORA_SCALE,
    LOHA_TENSORS,
    file_delta,
    match_lycoris,
)


def factor_shape(state: dict[str, torch.Tensor], name: str, algo: str) -> tuple[int, int]:
    """(rows, columns) of the update a module's factors make, without forming it."""
    if algo == "lora":
        return int(state[f"{name}.lora_up.weight"].shape[0]), int(state[f"{name}.lora_down.weight"].flatten(1).shape[1])
    if algo == "loha":
        return int(state[name + LOHA_TENSORS[0]].shape[0]), int(state[name + LOHA_TENSORS[1]].shape[1])

    def whole(factor: str) -> tuple[int, int]:
        if f"{name}.lokr_{factor}" in state:
            rows, cols = state[f"{name}.lokr_{factor}"].shape[:2]
        else:
            rows, cols = state[f"{name}.lokr_{factor}_a"].shape[0], state[f"{name}.lokr_{factor}_b"].shape[1]
        return int(rows), int(cols)

    (a, c), (b, d) = whole("w1"), whole("w2")
    return a * b, c * d


def consumer_weight(state: dict[str, torch.Tensor], name: str, algo: str, base: torch.Tensor, swap: bool) -> torch.Tensor:
    """ComfyUI's (and Forge's) weight at strength 1 for a module placed on ``base`` (a whole target or its slice)."""
    delta = file_delta(state, name, algo, base.shape)
    if swap:
        delta = torch.cat(delta.chunk(2, dim=0)[::-1])
    adapted = base + delta
    scale = state.get(name + DORA_SCALE)
    if scale is None:
        return adapted
    shape = (-1, *[1] * (base.dim() - 1))
    if scale.shape[0] != base.shape[0]:  # an input-axis magnitude (not what Studio writes)
        return adapted * (scale.double() / adapted.transpose(0, 1).flatten(1).norm(dim=1).reshape(1, *shape))
    return adapted * (scale.double().reshape(shape) / (base.flatten(1).norm(dim=1).reshape(shape) + COMFY_EPS))


def lycoris_flow_report(consumer: str, state: dict[str, torch.Tensor], layout: ModelLayout,
                        shapes: dict[str, tuple[int, int]], bases: dict[str, torch.Tensor] | None = None,
                        adapted: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """One tool's verdict on a flow-family LyCORIS file. ``shapes``: each target the adapter touches (original
    names; text encoders ``component:path``) and its weight's shape; ``bases``/``adapted``: their weights
    before and after the adapter, for the arithmetic (left out on a real-width layout without weights)."""
    result = match_lycoris(consumer, list(state), consumer_names(consumer, layout), ALL_ALGOS, True)
    if consumer == FORGE and len(result.dropped) > FORGE_MAX_UNMATCHED:
        result.rejected = f"{len(result.dropped)} keys unmatched (Forge refuses a LoRA with more than {FORGE_MAX_UNMATCHED})"
    placed: dict[str, list] = {}
    for slot, (name, algo) in result.modules.items():
        placed.setdefault(slot.target, []).append((slot, name, algo))
    misfit, wrong = [], []
    for target, entries in placed.items():
        rows, cols = shapes.get(target, (None, None))
        fits = [e for e in entries if factor_shape(state, e[1], e[2]) == ((e[0].rows or rows), cols)]
        misfit += [e[1] for e in entries if e not in fits]
        if bases is None or adapted is None or target not in bases or len(fits) != len(entries):
            continue
        weight = bases[target].clone()
        for slot, name, algo in fits:
            start = slot.offset or 0
            end = start + (slot.rows or weight.shape[0])
            weight[start:end] = consumer_weight(state, name, algo, weight[start:end], slot.swap)
        if not torch.allclose(weight, adapted[target], rtol=1e-4, atol=1e-6):
            wrong.append(target)
    loaded = set(placed) & set(shapes)
    left_out = sorted(set(shapes) - loaded)
    result.dropped = sorted(result.dropped + misfit)
    report: dict[str, Any] = {"proof": PROOF_KEY_RULES, "modules_loaded": len(loaded), "modules_in_file": len(shapes),
                              "counted": "weights of the original layout (a fused qkv is one)",
                              "keys_dropped": len(result.dropped)}
    if result.dropped:
        report["dropped"] = result.dropped[:10]
    if result.rejected:
        report["refused"] = result.rejected
    if left_out:
        report["left_out"] = left_out[:10]
    return with_verdict(report, result, left_out, wrong if bases is not None else None)


def lycoris_flow_reports(state: dict[str, torch.Tensor], layout: ModelLayout, shapes: dict[str, tuple[int, int]],
                         bases: dict[str, torch.Tensor] | None = None,
                         adapted: dict[str, torch.Tensor] | None = None) -> dict[str, dict[str, Any]]:
    """ComfyUI's and Forge's verdicts by their rules and arithmetic; sd-scripts' and A1111's by their rules."""
    from studio.export.consumers.a1111_sd3 import A1111, a1111_sd3_lycoris_report
    from studio.export.consumers.flow_sd_scripts import a1111_verdict, sd_scripts_lycoris_report

    verdicts = {name: lycoris_flow_report(name, state, layout, shapes, bases, adapted) for name in FLOW_KEY_RULE_CONSUMERS}
    verdicts[SD_SCRIPTS] = sd_scripts_lycoris_report(state, layout)
    flux = layout.family.name == "flux"
    verdicts[A1111] = a1111_verdict(layout.family.name) if flux else a1111_sd3_lycoris_report(state, layout)
    return verdicts
