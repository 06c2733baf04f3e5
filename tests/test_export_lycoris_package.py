"""LyCORIS' own code on Studio's kohya/LyCORIS files (marker ``compat``; run with scripts/test-compat): the
lycoris-lora package, in a side environment built from the package index, loads the LoKr, LoHa and DoRA files
of tiny-sd runs with its kohya loader (what sd-scripts runs for ``--network_module lycoris.kohya``). Every key
must be consumed, and each module's merged weight is compared with the adapted weight the run means; the
result must be what export.json claims for that consumer (studio.export.consumers.lycoris_package).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import _train_tiny

from studio.export.consumers.lycoris_package import CONSUMER, PACKAGE, lycoris_package_verdict

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not os.environ.get("STUDIO_COMPAT"), reason="side environments: run scripts/test-compat"),
]

LOADER = Path(__file__).parent / "compat" / "lycoris_loader.py"
REQUIREMENTS = ["torch==2.13.0", PACKAGE, "safetensors", "numpy<2.3"]
KINDS = ("lokr", "loha", "dora")


def _venv() -> Path:
    root = Path(os.environ.get("STUDIO_COMPAT_DIR", Path.home() / ".cache" / "studio-compat"))
    python = root / "lycoris" / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(root / "lycoris")], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
    return python


def _weight_files(run: Path, out: Path) -> tuple[Path, Path]:
    """Base and adapted weights of every adapted module, keyed as the side loader builds its modules."""
    from studio.atomic import save_safetensors
    from studio.export.context import ExportContext, render_spec
    from studio.export.lycoris import base_weights
    from studio.export.lycoris_export import read_run_adapter
    from studio.families.base import clip_rooted_path
    from studio.runs import load_run

    loaded = load_run(run)
    ctx = ExportContext(run=loaded, out=out, spec=render_spec(loaded), log=lambda _: None, progress=None)
    weights = read_run_adapter(ctx)
    bases = base_weights(ctx.fresh_base().components, weights)
    based, adapted = {}, {}
    for (component, path), module in weights.keyed().items():
        key = "unet." + path if component == "unet" else "te." + clip_rooted_path(path)
        base = bases[(component, path)]
        based[key], adapted[key] = base.contiguous(), (base.double() + module.delta(base)).float().contiguous()
    return save_safetensors(based, out / "bases.safetensors"), save_safetensors(adapted, out / "adapted.safetensors")


def test_lycoris_package_loads_studios_files(sample_subject, tmp_path_factory):
    from studio.export import export_run

    python = _venv()
    tasks, exports = [], {}
    for kind in KINDS:
        run = _train_tiny("lora", sample_subject, tmp_path_factory.mktemp("runs") / kind, steps=6, batch_size=1,
                          train_text_encoder=True, adapter_type=kind)
        exports[kind] = export_run(run, "kohya", tmp_path_factory.mktemp("exports") / kind)
        (file,) = [exports[kind].out_dir / f["path"] for f in exports[kind].files]
        bases, adapted = _weight_files(run, tmp_path_factory.mktemp("weights"))
        tasks.append({"file": str(file), "bases": str(bases), "expected": str(adapted)})
    request, answer = tmp_path_factory.mktemp("lycoris") / "tasks.json", tmp_path_factory.mktemp("lycoris") / "answer.json"
    request.write_text(json.dumps({"tasks": tasks}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    subprocess.run([str(python), str(LOADER), str(request), str(answer)], check=True, env=env, timeout=900)
    result = json.loads(answer.read_text())
    print(json.dumps(result, indent=1))
    for kind, got in zip(KINDS, result["results"], strict=True):
        assert "error" not in got, got
        assert got["modules_created"] == got["modules_in_file"] == 40, got  # 32 UNet + 8 CLIP modules
        assert got["keys_consumed"] == got["keys_in_file"] and not got["not_consumed"], got
        claim = lycoris_package_verdict(kind)
        (entry,) = exports[kind].files
        assert entry["consumers"][CONSUMER] == claim  # what export.json says
        if claim["loads"] == "all":
            assert got["max_diff_relative_to_update"] < 1e-4, got
        else:  # DoRA: every key read, but LyCORIS normalises the adapted rows where ComfyUI/Forge take the base's
            assert got["max_diff_relative_to_update"] > 1e-3, got
