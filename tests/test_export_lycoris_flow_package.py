"""LyCORIS' own loader on Studio's Flux/SD3 DoRA and LoHa files in the fused original layout (marker ``compat``;
run with scripts/test-compat): the lycoris-lora package, in its side environment, builds its network on module
trees with sd-scripts' Flux/MMDiT names (BFL's ``double_blocks``, SAI's ``joint_blocks``) and CLIP-L as
``lora_te1_``, then each module's weight is read back along LyCORIS' inference path (``apply_to`` + forward) and
its merge path (``get_merged_weight``) and compared with the adapted weight the adapter means. The result must be
what export.json claims (studio.export.consumers.lycoris_package.lycoris_flow_package_verdict)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_export_lycoris_package import _venv
from test_flow_adapter_types import BASES, _attention_and_final, _file_and_truth, pipe_family

from studio.atomic import save_safetensors
from studio.export.consumers.lycoris_package import lycoris_flow_package_verdict, twice_scaled
from studio.models import load_base

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not os.environ.get("STUDIO_COMPAT"), reason="side environments: run scripts/test-compat"),
]

LOADER = Path(__file__).parent / "compat" / "lycoris_flow_loader.py"


def _tree_key(target: str) -> str:
    if ":" not in target:
        return "unet." + target  # an original-layout weight, as sd-scripts' models name it
    component, path = target.split(":", 1)
    return {"text_encoder": "te1", "text_encoder_2": "te2"}[component] + ".text_model." + path


def test_lycoris_loads_the_fused_flow_files(tmp_path, tiny_data_dir):
    tasks, states = [], {}
    for family_name, base in BASES.items():
        pipe = load_base(base).pipeline
        components = {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder}
        for kind in ("dora", "loha"):  # rank 2, alpha 4: the unfused modules keep alpha != rank
            _, state, bases, adapted, _ = _file_and_truth(kind, components, pipe_family(pipe), _attention_and_final)
            stem = tmp_path / f"{family_name}-{kind}"
            file = save_safetensors({k: v.contiguous() for k, v in state.items()}, stem.with_suffix(".safetensors"))
            based = save_safetensors({_tree_key(t): w.float().contiguous() for t, w in bases.items()},
                                     tmp_path / f"{stem.name}-bases.safetensors")
            wanted = save_safetensors({_tree_key(t): w.float().contiguous() for t, w in adapted.items()},
                                      tmp_path / f"{stem.name}-adapted.safetensors")
            tasks.append({"file": str(file), "bases": str(based), "expected": str(wanted)})
            states[str(file)] = (kind, state)
    request, answer = tmp_path / "tasks.json", tmp_path / "answer.json"
    request.write_text(json.dumps({"tasks": tasks}))
    subprocess.run([str(_venv()), str(LOADER), str(request), str(answer)], check=True)
    report = json.loads(answer.read_text())
    assert report["lycoris"] == "4.1.3"
    for result in report["results"]:
        assert "error" not in result, result
        kind, state = states[result["file"]]
        print(Path(result["file"]).name, {k: v for k, v in result.items() if k != "file"})
        assert result["keys_consumed"] == result["keys_in_file"] and not result["not_consumed"], result
        assert result["modules_created"] == result["modules_in_file"] > 0
        verdict = lycoris_flow_package_verdict(kind, state)
        if kind == "loha":  # inference exact; merging scales alpha != rank modules twice, as the verdict names them
            assert result["forward_max_diff_relative_to_update"] < 1e-5, result
            assert result["merged_modules_off"] == twice_scaled(state) != [], result
            assert verdict["loads"] == "partial" and verdict["merged_wrong"] == twice_scaled(state)[:10]
        else:  # DoRA: LyCORIS divides dora_scale by the adapted rows' norm, the file is written for ComfyUI/Forge
            assert result["forward_modules_off"] and result["forward_max_diff_relative_to_update"] > 1e-3, result
            assert verdict["loads"] == "partial" and "another" in verdict["strength"]
