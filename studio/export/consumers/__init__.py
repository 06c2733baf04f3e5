"""Which consumers load a LoRA file, by each consumer's own key rules, and at what strength.

ComfyUI's engine, AUTOMATIC1111, Forge and kohya sd-scripts do not install from the package index, so
their loaders cannot run here; each module restates the rules its tool uses to place a LoRA key
(:mod:`.comfyui`, :mod:`.webui`, :mod:`.sd_scripts`). diffusers and peft are checked by running their
own code instead (``studio.export.verify`` and the compatibility suite).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from studio.export.consumers import comfyui, sd_scripts, webui
from studio.export.consumers.layout import ModelLayout, layout_of
from studio.export.consumers.rules import KeyMatch, loads_verdict
from studio.export.lora_weights import LoraWeights

KEY_RULES: dict[str, Callable[[list[str], ModelLayout], KeyMatch]] = {
    comfyui.NAME: comfyui.match,
    webui.A1111: webui.match_a1111,
    webui.FORGE: webui.match_forge,
    sd_scripts.NAME: sd_scripts.match,
}
PROOF_KEY_RULES = "key rules"
PROOF_OWN_CODE = "own code"


def match_all(keys: list[str], layout: ModelLayout) -> dict[str, KeyMatch]:
    return {name: rule(keys, layout) for name, rule in KEY_RULES.items()}


def strength_errors(state: dict[str, torch.Tensor], result: KeyMatch, weights: LoraWeights) -> list[str]:
    """Modules whose update, as this consumer computes it (scale = alpha tensor / rank, or 1 without
    one), differs from the LoRA's ``alpha / rank * up @ down``."""
    wrong = []
    expected = weights.keyed()
    for module, (down_key, up_key) in result.modules.items():
        if module not in expected:
            wrong.append(f"{module[0]}.{module[1]} (not in the LoRA)")
            continue
        down, up = state[down_key].flatten(1).double(), state[up_key].flatten(1).double()
        alpha_key = result.alphas.get(module)
        scale = float(state[alpha_key]) / down.shape[0] if alpha_key else 1.0
        want = expected[module]
        wanted = want.scale * want.up.flatten(1).double() @ want.down.flatten(1).double()
        if not torch.allclose(scale * up @ down, wanted, rtol=1e-5, atol=1e-7):
            wrong.append(f"{module[0]}.{module[1]}")
    return wrong


def consumer_report(result: KeyMatch, weights: LoraWeights, state: dict[str, torch.Tensor] | None = None,
                    module_norm2: dict[tuple[str, str], float] | None = None,
                    delta_norm2: float | None = None) -> dict[str, Any]:
    """One consumer's verdict on one file, for export.json: how much of the LoRA it loads.

    With the per-module squared norms of a fine-tune's change (an SVD extraction), the modules it leaves
    out are also measured as a relative Frobenius norm of the whole change.
    """
    wanted = weights.keyed()
    left_out = sorted(set(wanted) - set(result.modules))
    report: dict[str, Any] = {
        "proof": PROOF_KEY_RULES,
        "modules_loaded": len(set(result.modules) & set(wanted)),
        "modules_in_file": len(wanted),
        "keys_dropped": len(result.dropped),
    }
    if result.rejected:
        report["refused"] = result.rejected
    if left_out:
        report["left_out"] = [f"{c}.{p}" for c, p in left_out]
        if module_norm2 is not None and delta_norm2:
            share = sum(module_norm2.get(m, 0.0) for m in left_out) / delta_norm2
            report["left_out_relative_norm"] = round(share**0.5, 6)
    wrong = strength_errors(state, result, weights) if state is not None else None
    return with_verdict(report, result, left_out, wrong)


def with_verdict(report: dict[str, Any], result, left_out: list, wrong: list[str] | None) -> dict[str, Any]:
    """Add the strength check (``wrong``: modules at another strength; None when not checked) and the verdict:
    ``refused``, ``none``, ``partial`` (something left out, dropped or mis-scaled) or ``all``."""
    if wrong is not None:
        report["strength"] = "as trained" if not wrong else f"{len(wrong)} modules at another strength"
        if wrong:
            report["wrong_strength"] = wrong[:10]
    report["loads"] = loads_verdict(bool(result.rejected), bool(report["modules_loaded"]),
                                    bool(left_out or result.dropped or wrong))
    return report



__all__ = ["KEY_RULES", "ModelLayout", "consumer_report", "layout_of", "loads_verdict", "match_all", "strength_errors", "with_verdict"]
