"""Export compatibility, part 2 (marker ``compat``; run with scripts/test-compat): the consumers' own
loading code in side environments built from the package index — diffusers 0.32 with transformers 4.47
and diffusers 0.36 with transformers 4.57 — loading the files Studio exported under diffusers 0.42 /
transformers 5. Each environment is a venv built once under ``STUDIO_COMPAT_DIR`` (default
``~/.cache/studio-compat``) with the local CPU torch; ``tests/compat/side_loader.py`` runs inside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not os.environ.get("STUDIO_COMPAT"), reason="side environments: run scripts/test-compat"),
]

LOADER = Path(__file__).parent / "compat" / "side_loader.py"
TORCH = "torch==2.13.0"  # the local CPU wheel
ENVIRONMENTS = {
    "d032": ["diffusers==0.32.2", "transformers==4.47.1", "peft==0.14.0", "accelerate==1.2.1",
             "huggingface-hub==0.27.1"],
    "d036": ["diffusers==0.36.0", "transformers==4.57.6", "peft==0.18.0", "accelerate==1.12.0",
             "huggingface-hub<1.0"],
}
COMMON = ["safetensors", "numpy<2.3", "pillow"]


def _venv(name: str) -> Path:
    root = Path(os.environ.get("STUDIO_COMPAT_DIR", Path.home() / ".cache" / "studio-compat"))
    python = root / name / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(root / name)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", TORCH, *ENVIRONMENTS[name], *COMMON], check=True)
    return python


@pytest.fixture(scope="module")
def portable_base(tiny_data_dir, tmp_path_factory) -> Path:
    """tiny-sd as a hub download would be: text-encoder keys rooted, slow-tokenizer files present."""
    from studio.export.portable_folder import make_portable
    from studio.families.sd import StableDiffusionFamily
    from studio.models.builtin import materialize

    folder = tmp_path_factory.mktemp("compat-base") / "tiny-sd"
    materialize("tiny-sd", folder)
    make_portable(folder, StableDiffusionFamily())
    return folder


def _tasks(lora, ti, dreambooth) -> list[dict]:
    def reference(export):
        return str(export.out_dir / "images" / "example.png")

    lora_modules = json.loads((lora.out_dir / "export.json").read_text())["lora_modules"]
    kohya = next(f["path"] for f in lora.files if f["format"] == "LoRA (kohya)")
    a1111 = next(f["path"] for f in ti.files if f["format"] == "embedding (A1111)")
    token = Path(a1111).stem  # a webui user types the file's stem
    return [
        {"kind": "lora", "path": str(lora.out_dir / "pytorch_lora_weights.safetensors"), "expect": lora_modules,
         "reference": reference(lora)},
        {"kind": "lora", "path": str(lora.out_dir / kohya), "expect": lora_modules, "reference": reference(lora)},
        {"kind": "peft", "path": str(lora.out_dir / "peft"), "components": ["unet", "text_encoder"],
         "expect": lora_modules, "reference": reference(lora)},
        {"kind": "pipeline", "path": str(dreambooth.out_dir), "reference": reference(dreambooth)},
        {"kind": "embedding", "path": str(ti.out_dir / a1111), "reference": reference(ti),
         "files": [{"file": str(ti.out_dir / a1111), "token": token}], "replace_token": token},
    ]


@pytest.mark.parametrize("environment", sorted(ENVIRONMENTS))
def test_exports_load_fully_in_older_diffusers_and_transformers_4(
        environment, portable_base, tiny_lora_export, tiny_ti_export, tiny_dreambooth_export, tmp_path):
    python = _venv(environment)
    report = json.loads((tiny_lora_export.out_dir / "export.json").read_text())["verification"]
    spec = {k: report[k] for k in ("prompt", "seed", "steps", "guidance", "height", "width")}
    tasks = _tasks(tiny_lora_export, tiny_ti_export, tiny_dreambooth_export)
    for task in tasks:  # each export's own verification prompt
        spec_of = json.loads((Path(task["reference"]).parent.parent / "export.json").read_text())["verification"]
        task["spec"] = spec_of["prompt"]
        if "replace_token" in task:
            run_token = json.loads((tiny_ti_export.out_dir / "export.json").read_text())["run"]
            result_token = json.loads((Path(run_token) / "result.json").read_text())["token"]
            task["spec"] = task["spec"].replace(result_token, task["replace_token"])
    request = tmp_path / "tasks.json"
    answer = tmp_path / "answer.json"
    request.write_text(json.dumps({"base": str(portable_base), "spec": spec, "tasks": tasks}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    subprocess.run([str(python), str(LOADER), str(request), str(answer)], check=True, env=env, timeout=900)
    result = json.loads(answer.read_text())
    print(json.dumps(result, indent=1))
    for task, got in zip(tasks, result["results"], strict=True):
        assert "error" not in got, (result["diffusers"], got)
        assert not got["warnings"], got
        if "expect" in task:
            assert got["layers"] == task["expect"], got
        assert got["grey_levels"] <= 1.0, got
    shutil.rmtree(tmp_path, ignore_errors=True)
