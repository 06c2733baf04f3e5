"""DoRA, LoKr and LoHa exports: peft and diffusers load them with their own code (every layer's change
and the image equal the run's), and the kohya/LyCORIS file is read completely and at its trained
strength by ComfyUI's and Forge's rules; what A1111, sd-scripts and diffusers make of it is recorded."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import _train_tiny

from studio.export import export_run
from studio.export.consumers.lycoris_rules import lycoris_reports
from studio.export.lycoris import AdapterModule, AdapterWeights, kohya_lycoris_state

KINDS = ("dora", "lokr", "loha")
LYCORIS = "sd-scripts + LyCORIS (lycoris.kohya)"  # LyCORIS' own loader, proven in scripts/test-compat
EXPECTED = {  # consumer verdicts on the kohya/LyCORIS file
    "dora": {"ComfyUI": "all", "Forge": "all", "A1111": "partial", "kohya sd-scripts": "partial", "diffusers": "partial",
             LYCORIS: "partial"},
    "lokr": {"ComfyUI": "all", "Forge": "all", "A1111": "all", "kohya sd-scripts": "none", "diffusers": "refused",
             LYCORIS: "all"},
    "loha": {"ComfyUI": "all", "Forge": "all", "A1111": "all", "kohya sd-scripts": "none", "diffusers": "refused",
             LYCORIS: "all"},
}


@pytest.fixture(scope="module", params=KINDS)
def exported(request, sample_subject, tmp_path_factory):
    kind = request.param
    run = _train_tiny("lora", sample_subject, tmp_path_factory.mktemp("runs") / kind, steps=6, batch_size=1,
                      train_text_encoder=True, adapter_type=kind)
    return kind, export_run(run, "all", tmp_path_factory.mktemp("exports") / kind)


def test_each_file_loads_completely_by_its_consumers(exported):
    kind, result = exported
    report = json.loads((result.out_dir / "export.json").read_text())
    assert report["adapter_type"] == kind
    by_layout = {}
    for entry in report["files"]:
        by_layout.setdefault(entry["layout"], []).append(entry)
    expected_layouts = {"peft", "kohya"} | ({"diffusers"} if kind == "dora" else set())
    assert set(by_layout) == expected_layouts
    for layout in expected_layouts - {"kohya"}:  # own code: every layer, the same image
        for entry in by_layout[layout]:
            verdict = entry["consumers"][layout]
            assert verdict["proof"] == "own code" and verdict["loads"] == "all", entry
            assert entry["max_abs_diff"] <= 1e-3
    (kohya,) = by_layout["kohya"]
    verdicts = {name: v["loads"] for name, v in kohya["consumers"].items()}
    assert verdicts == EXPECTED[kind]
    assert kohya["consumers"]["ComfyUI"]["modules_loaded"] == report["adapter_modules"] == 40  # 32 UNet + 8 CLIP
    if kind == "dora":  # diffusers' own loader drops the magnitude: it renders another image
        assert kohya["consumers"]["diffusers"]["max_abs_diff"] > 1e-2


def test_lycoris_key_names(exported):
    from safetensors import safe_open

    kind, result = exported
    path = next(p for p in result.out_dir.glob("*.safetensors") if p.name != "pytorch_lora_weights.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    tensors = {key.split(".", 1)[1] for key in keys}
    wanted = {"dora": {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"},
              "lokr": {"lokr_w1", "lokr_w2", "alpha"}, "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}}
    assert tensors == wanted[kind]
    assert all(key.startswith(("lora_unet_", "lora_te_")) for key in keys)
    assert metadata["ss_network_module"] == "lycoris.kohya"
    assert json.loads(metadata["ss_network_args"])["algo"] == ("lora" if kind == "dora" else kind)


def _linear_layout():
    """A one-layer 'model' the consumers' rules can place (the UNet's first attention projection)."""
    from studio.export.consumers.layout import ModelLayout, Module
    from studio.families.sd import StableDiffusionFamily

    path = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    config = {"down_block_types": ["CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D"], "layers_per_block": 1}
    return ModelLayout(StableDiffusionFamily(), config, [Module("unet", path, "linear")]), path


def test_consumer_arithmetic_catches_a_wrong_scale():
    """Whole LoKr factors carry no alpha for LyCORIS readers: writing peft's alpha instead of folding it in
    must show as 'another strength'; the folded file is read as trained."""
    layout, path = _linear_layout()
    generator = torch.Generator().manual_seed(0)
    module = AdapterModule("unet", path, "lokr", {"lokr_w1": torch.randn(4, 4, generator=generator),
                                                   "lokr_w2": torch.randn(8, 8, generator=generator)}, alpha=8.0, rank=4)
    weights = AdapterWeights("lokr", [module])
    base = {("unet", path): torch.randn(32, 32, generator=generator)}
    try:
        from studio.families.sdxl.names import sgm_unet_name

        sgm_unet_name(path, layout.unet_config)
    except Exception:
        pytest.skip("this layout's original names need a full UNet config")
    good = kohya_lycoris_state(weights, layout.family, base)
    bad = {k: v for k, v in good.items()} | {
        k: module.tensors["lokr_w1"] for k in good if k.endswith(".lokr_w1")} | {
        k.replace(".lokr_w1", ".alpha"): torch.tensor(8.0) for k in good if k.endswith(".lokr_w1")}
    assert lycoris_reports(list(good), layout, weights.keyed(), good, base)["ComfyUI"]["loads"] == "all"
    verdict = lycoris_reports(list(bad), layout, weights.keyed(), bad, base)["ComfyUI"]
    assert verdict["loads"] == "partial" and verdict["strength"] == "1 modules at another strength"


@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_real_sdxl_layout_names_place_every_module(kind):
    """On the real SDXL layout (meta device), every UNet and CLIP attention module of a LyCORIS file is
    placed by ComfyUI, Forge and A1111 (SGM names, lora_te1_/lora_te2_)."""
    from test_export_compat_rules import _lora_run_weights, _meta_layout

    layout, shapes = _meta_layout("sdxl")
    tensors = {"lokr": {"lokr_w1": torch.ones(1, 1), "lokr_w2": torch.ones(1, 1)},
               "loha": {name: torch.ones(1, 1) for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}}[kind]
    modules = [AdapterModule(m.component, m.path, kind, dict(tensors), 1.0, 1) for m in _lora_run_weights(shapes).modules]
    weights = AdapterWeights(kind, modules)
    state = kohya_lycoris_state(weights, layout.family, {}, layout.unet_config)
    reports = lycoris_reports(list(state), layout, weights.keyed())
    for consumer in ("ComfyUI", "Forge", "A1111"):
        assert reports[consumer]["loads"] == "all", (consumer, reports[consumer])
        assert reports[consumer]["modules_loaded"] == len(modules) > 700
    assert reports["kohya sd-scripts"]["loads"] == "none"
