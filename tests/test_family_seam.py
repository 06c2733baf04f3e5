"""The seam's contracts: families own the model's shape, methods are described once, reading a run
needs neither torch nor the trainers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from studio.families import FAMILIES, LORA_COMPONENTS, family_named, is_denoiser
from studio.methods import METHOD_SPECS, method_spec


def test_every_trained_method_is_described_and_every_description_trains():
    import trainers

    assert set(trainers.METHODS) == set(METHOD_SPECS)
    for name, spec in METHOD_SPECS.items():
        assert trainers.METHODS[name].artifact == spec.artifact, name


def test_an_unknown_method_is_refused_by_name():
    from studio.errors import StudioError

    with pytest.raises(StudioError, match="not a training method"):
        method_spec("lycoris")


def test_families_declare_their_shape():
    names = [family.name for family in FAMILIES]
    assert len(names) == len(set(names))
    for family_class in FAMILIES:
        family = family_class()
        assert family_named(family.name).name == family.name
        assert family.component_names[0] == family.denoiser_name and "vae" in family.component_names
        assert set(family.lora_text_encoder_names) <= set(family.text_encoder_names)
        assert set(family.embedding_text_encoder_names) <= set(family.clip_text_encoder_names)
        assert is_denoiser(family.denoiser_name) and family.denoiser_name in LORA_COMPONENTS
        assert all(not is_denoiser(n) for n in family.text_encoder_names)
    assert family_named("flux").text_only_encoder_names == ("text_encoder_2",)
    assert family_named("sd3").text_only_encoder_names == ("text_encoder_3",)
    assert family_named("sdxl").text_only_encoder_names == ()


def test_reading_a_run_imports_neither_torch_nor_the_trainers(tiny_lora_run):
    code = (
        "import sys; from studio.runs import load_run; from studio.run_layout import read_run_config; "
        f"run = load_run({str(tiny_lora_run)!r}); assert run.finished and run.method == 'lora'; "
        "read_run_config(run.directory); from studio.methods import method_spec; method_spec(run.method); "
        "loaded = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'trainers'))]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
