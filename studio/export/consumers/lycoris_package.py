"""What LyCORIS' own loader makes of Studio's SD1.x/2.x/SDXL kohya/LyCORIS files: kohya sd-scripts with
``--network_module lycoris.kohya`` (and the tools built on it) load such a file with the lycoris-lora package's
``lycoris.kohya.create_network_from_weights``.

The package is not one of Studio's dependencies, so the verdicts here are the ones its own code gave in a
side environment, and the compatibility suite (``scripts/test-compat``,
tests/test_export_lycoris_package.py) asserts them again each time it runs: every key of a LoKr, LoHa and DoRA
file consumed by the module LyCORIS creates for it, and each module's merged weight compared with the run's.
LoKr and LoHa merge to the run's weights. DoRA does not: LyCORIS divides ``dora_scale`` by the norm of the
*adapted* rows (as peft does), ComfyUI and Forge by the *base* rows, and the file's ``dora_scale`` is written
for ComfyUI and Forge (:mod:`studio.export.lycoris`), so under LyCORIS each row is off by
``‖W‖ / ‖W + ΔW‖``: the modules load, at another strength.

Flux/SD3 files (the fused original layout) are checked the same way on tiny-flux and tiny-sd3 (tests/test_export_lycoris_flow_package.py): every key consumed;
LoHa exact on LyCORIS' inference path, DoRA at another strength as above. lycoris-lora 4.1.3's merge path scales a
LoHa module by ``alpha / rank`` twice (:func:`twice_scaled`): exact only where alpha equals the rank.
"""

from __future__ import annotations

from typing import Any

import torch

PACKAGE = "lycoris-lora==4.1.3"
CONSUMER = "sd-scripts + LyCORIS (lycoris.kohya)"
PROOF = "own code, in scripts/test-compat (tests/test_export_lycoris_package.py)"
LOADER = f"{PACKAGE} lycoris.kohya.create_network_from_weights"


def lycoris_package_verdict(kind: str) -> dict[str, Any]:
    """The export.json entry for LyCORIS' own loader on a ``kind`` (lokr, loha, dora) kohya file of an SD family."""
    if kind == "dora":
        return {"proof": PROOF, "loads": "partial", "loader": LOADER, "keys": "all consumed",
                "strength": "another: LyCORIS normalises dora_scale by the adapted rows' norm, the file is written "
                            "for ComfyUI/Forge, which take the base rows' (each row off by ‖W‖/‖W+ΔW‖)"}
    return {"proof": PROOF, "loads": "all", "loader": LOADER, "keys": "all consumed", "strength": "as trained"}


FLOW_PROOF = "own code, in scripts/test-compat (tests/test_export_lycoris_flow_package.py)"


def twice_scaled(state: dict[str, torch.Tensor]) -> list[str]:
    """LoHa modules whose ``alpha`` is not their rank: lycoris-lora 4.1.3's ``LohaModule.get_merged_weight`` (what
    ``merge_to`` writes) scales their update by ``alpha / rank`` twice (once in ``get_weight``, once in
    ``get_diff_weight``); its forward path (``apply_to``) scales once, as the file means."""
    return sorted(key.removesuffix(".hada_w1_b") for key, value in state.items() if key.endswith(".hada_w1_b")
                  and f"{key.removesuffix('.hada_w1_b')}.alpha" in state
                  and float(state[f"{key.removesuffix('.hada_w1_b')}.alpha"]) != value.shape[0])


def lycoris_flow_package_verdict(kind: str, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """LyCORIS' own loader on a Flux/SD3 DoRA or LoHa file in the fused original layout: sd-scripts' Flux and MMDiT
    models carry BFL's/SAI's names, and ``create_network_from_weights`` builds a module for every
    ``lora_unet_<name>``/``lora_te<N>_<name>`` whose layer it finds (it does not consult its target-module list
    there), so every key is consumed (tiny-flux, tiny-sd3: 7 of 7 and 9 of 9 modules)."""
    if kind == "dora":
        return lycoris_package_verdict("dora") | {"proof": FLOW_PROOF}
    verdict = {"proof": FLOW_PROOF, "loads": "all", "loader": LOADER, "keys": "all consumed", "strength": "as trained"}
    doubled = twice_scaled(state)
    if doubled:
        verdict |= {"loads": "partial", "strength": f"as trained when applied (apply_to); merge_to scales {len(doubled)} "
                                                    "modules whose alpha is not their rank by alpha/rank twice",
                    "merged_wrong": doubled[:10]}
    return verdict
