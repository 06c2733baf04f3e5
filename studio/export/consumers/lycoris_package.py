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
"""

from __future__ import annotations

from typing import Any

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


def lycoris_package_not_checked() -> dict[str, Any]:
    """For the flow families' fused layout, which this proof does not cover."""
    return {"proof": "none", "loads": "not checked",
            "why": "LyCORIS' own loader is run on SD1.x files only (scripts/test-compat): no claim either way"}
