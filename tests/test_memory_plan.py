"""The memory plan (studio/memory_plan.py): predicted peaks from the benchmarks' floors and measured
activations, the verdict per device, and the settings it names when a run will not fit."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
from conftest import tiny_config

from studio import memory_plan, memory_shapes
from studio.config import load_config
from studio.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
GB = 1e9


def _flow_memory_rows() -> list[dict]:
    return json.loads((ROOT / "benchmarks" / "results" / "flow_memory.json").read_text())["rows"]


def test_architecture_table_matches_the_meta_models():
    """The table of published shapes is what the benchmarks' own architecture definitions give."""
    sys.path.insert(0, str(ROOT))
    import torch
    from diffusers import UNet2DConditionModel

    from benchmarks.flow_arch import TEXT_ENCODERS, text_encoder, transformer
    from studio.models import real_arch

    for name in ("sd35-medium",):  # Flux and SD3.5 large build in seconds too; one keeps the test short
        model = transformer(name)
        assert memory_plan.inventory(model) == memory_plan.ARCHITECTURES[name]
        assert memory_shapes.block_runs(model) == memory_shapes.BLOCKS[name]  # the swappable blocks
    with torch.device("meta"):
        assert memory_plan.inventory(UNet2DConditionModel(**real_arch.SD15_UNET)) == memory_plan.ARCHITECTURES["sd15"]
    assert memory_plan.TEXT_ENCODER_PARAMS["clip_l"] == sum(p.numel() for p in text_encoder("clip_l").parameters())
    assert set(TEXT_ENCODERS["flux-dev"]) == set(memory_plan.ENCODERS_OF["flux-dev"])


@pytest.mark.parametrize("row", [r for r in _flow_memory_rows() if r["method"] == "lora"],
                         ids=lambda r: f"{r['model']}-{'gc' if r['gradient_checkpointing'] else 'nogc'}")
def test_prediction_reproduces_the_measured_h200_peaks(row):
    """bf16 LoRA r=16 at 1024 px on the H200 (benchmarks/flow_memory.py, AdamW): the plan's step peak
    without the context allowance is within 5 % of the measured max_memory_allocated. (The benchmark kept
    SD3's positional table in fp32; a Studio run casts it to the frozen dtype: added back here.)"""
    base = {v: k for k, v in memory_plan.HUB_IDS.items()}[row["model"]]
    config = load_config(None, {"method": "lora", "base": base, "resolution": 1024, "lora_rank": 16, "lora_alpha": 16,
                                "mixed_precision": "bf16", "optimizer": "adamw",
                                "gradient_checkpointing": row["gradient_checkpointing"]})
    parts, _ = memory_plan.predict(config)
    predicted = sum(v for k, v in parts.items() if k != "CUDA context and slack")
    predicted += memory_plan.ARCHITECTURES[row["model"]]["buffers"] * 2 / memory_plan.GIB
    assert predicted == pytest.approx(row["peak_gib"], rel=0.05)


def test_plan_names_settings_that_make_flux_fit_12gb():
    config = load_config("flux-lora", {})
    plan = memory_plan.plan_memory(config, device_gib=12)
    assert plan.fits is False and plan.peak_gib > 24
    first = plan.suggestions[0]
    # the NF4 step fits, samples included: they render from the cached prompt embeddings (T5 stays off the device)
    assert first["settings"] == {"base_quantization": "nf4"}
    assert first["peak_gib"] <= 12
    text = plan.describe()
    assert "does NOT fit" in text and "--set base_quantization=nf4" in text
    browser = plan.describe("browser")  # the Train tab's wording: settings, not flags
    assert "--" not in browser and "base_quantization = nf4" in browser
    # applying the suggestion really fits, by the same prediction
    fixed = memory_plan.plan_memory(dataclasses.replace(config, **first["settings"]), device_gib=12)
    assert fixed.fits and fixed.peak_gib == pytest.approx(first["peak_gib"])


SIZED = sorted(p.stem for p in (ROOT / "recipes").glob("*-*gb.yaml"))


@pytest.mark.parametrize("recipe", SIZED)
def test_sized_recipes_fit_their_cards(recipe):
    """Each recipe named for a card size fits it by the plan, and its description states the plan's peak."""
    gib = int(recipe.rsplit("-", 1)[1].removesuffix("gb"))
    config = load_config(recipe, {})
    plan = memory_plan.plan_memory(config, device_gib=gib)
    assert plan.fits, plan.describe()
    from studio.config import recipe_description

    assert f"Predicted peak {plan.peak_gib:.1f} GiB" in recipe_description(recipe)


def test_sized_recipes_cover_the_targets():
    assert {"flux-lora-8gb", "flux-lora-12gb", "flux-lora-24gb", "sd35-medium-lora-8gb", "sd35-large-lora-12gb", "sdxl-lora-8gb"} <= set(SIZED)
    # the targets: Flux r=16 at 1024 px within 12 GB, SD3.5 medium and SDXL within 8 GB
    assert load_config("flux-lora-12gb", {}).resolution == 1024 and load_config("flux-lora-12gb", {}).lora_rank == 16


def test_samples_bring_the_encoders_back_unless_t5_embeddings_are_cached():
    # SDXL (no T5): samples bring its CLIP encoders back beside the UNet
    config = load_config("sdxl-lora", {})
    peak, parts, sampling, _ = memory_plan.total_gib(config)
    encoders = sum(memory_plan.TEXT_ENCODER_PARAMS[k] for k in memory_plan.ENCODERS_OF["sdxl"]) * 2 / memory_plan.GIB
    assert sampling > sum(parts.values()) and sampling - parts["frozen denoiser"] > encoders
    quiet = dataclasses.replace(config, sample_every=0, validation=False)
    assert memory_plan.total_gib(quiet)[2] == 0 and memory_plan.total_gib(quiet)[0] == pytest.approx(sum(parts.values()))
    # SD3.5 (T5): samples render from the cached prompt embeddings (trainers/sample_embeddings.py): the VAE comes back only
    config = load_config("sd35-medium-lora", {})
    _, parts, sampling, _ = memory_plan.total_gib(config)
    encoders = sum(memory_plan.TEXT_ENCODER_PARAMS[k] for k in memory_plan.ENCODERS_OF["sd35-medium"]) * 2 / memory_plan.GIB
    assert 0 < sampling - parts["frozen denoiser"] < encoders
    uncached = memory_plan.total_gib(dataclasses.replace(config, train_text_encoder=True))[2]
    assert uncached - sampling > encoders * 0.95


def test_block_swapping_takes_the_swapped_blocks_off_the_device():
    config = load_config("flux-lora-12gb", {})
    parts, _ = memory_plan.predict(config)
    swapped, _ = memory_plan.predict(dataclasses.replace(config, blocks_to_swap=38))  # the 38 single blocks
    single = memory_shapes.BLOCKS["flux-dev"][1]
    nf4 = memory_plan.quantized_linear_bytes({"linear_params": single[2], "linear_rows": single[3]}, "nf4", 2)
    block = (nf4 + (single[1] - single[2]) * 2) / memory_plan.GIB
    assert parts["frozen denoiser"] - swapped["frozen denoiser"] == pytest.approx(38 * block)
    assert swapped["block-swap buffer"] == pytest.approx(2 * block)
    # without checkpointing the backward would hold every block: no saving (the trainer refuses it)
    unchecked, notes = memory_plan.predict(dataclasses.replace(config, blocks_to_swap=38, gradient_checkpointing=False))
    assert "block-swap buffer" not in unchecked and any("gradient_checkpointing" in n for n in notes)
    # fp8 stores a byte per Linear value (+ a scale per row): between NF4 and bf16
    fp8, _ = memory_plan.predict(dataclasses.replace(config, base_quantization="fp8"))
    linear = memory_plan.ARCHITECTURES["flux-dev"]["linear_params"]
    assert fp8["frozen denoiser"] == pytest.approx(linear / memory_plan.GIB, rel=0.01)


def test_flux_on_8gb_with_nf4_offloading_and_block_swapping():
    plan = memory_plan.plan_memory(load_config("flux-lora", {}), device_gib=8)
    assert plan.fits is False
    first = plan.suggestions[0]["settings"]
    assert first["base_quantization"] == "nf4" and first["offload_activations"] is True
    assert "--set offload_activations=true" in plan.describe()
    recipe = load_config("flux-lora-8gb", {})
    assert recipe.base_quantization == "nf4" and recipe.offload_activations and recipe.resolution == 1024
    assert 0 < recipe.blocks_to_swap < 20  # a few blocks: each swapped block costs PCIe copies every step
    assert memory_plan.plan_memory(recipe, device_gib=8).peak_gib <= 7.5  # an "8 GB" card reports 7.6-8 GiB
    unswapped = memory_plan.plan_memory(dataclasses.replace(recipe, blocks_to_swap=0), device_gib=8).peak_gib
    kept = memory_plan.plan_memory(dataclasses.replace(recipe, offload_activations=False), device_gib=8).peak_gib
    assert unswapped > 7.5 and kept > 7.5  # both are needed


def test_quantization_and_checkpointing_lower_the_peak():
    config = load_config("flux-lora", {})
    peaks = {q: sum(memory_plan.predict(dataclasses.replace(config, base_quantization=q))[0].values()) for q in ("none", "int8", "nf4")}
    assert peaks["nf4"] < peaks["int8"] < peaks["none"]
    no_ckpt = sum(memory_plan.predict(dataclasses.replace(config, gradient_checkpointing=False))[0].values())
    assert no_ckpt > peaks["none"] + 20  # Flux without checkpointing: 23.9 GiB of activations measured
    # NF4 holds about 0.52 B per Linear weight value: Flux's 11.9 B of them in about 5.8 GiB
    parts, _ = memory_plan.predict(dataclasses.replace(config, base_quantization="nf4"))
    assert 5.5 < parts["frozen denoiser"] < 6.0


def test_dreambooth_ignores_quantization_and_counts_full_training():
    config = load_config("sd35-dreambooth", {})
    parts, _ = memory_plan.predict(config)
    assert "frozen denoiser" not in parts
    params = memory_plan.ARCHITECTURES["sd35-medium"]["params"]
    assert parts["trainable weights"] == pytest.approx(params * 4 / memory_plan.GIB)


def test_tiny_builtin_is_read_from_its_config(tiny_data_dir):
    plan = memory_plan.plan_memory(tiny_config("lora"), device_gib=8)
    assert plan.fits and plan.peak_gib < 1.1  # the context allowance and a few MB
    assert "tiny-sd" in plan.architecture


def test_unknown_hub_id_has_no_plan():
    with pytest.raises(LookupError):
        memory_plan.plan_memory(tiny_config("lora", base="someone/unknown-model"), device_gib=8)


def test_check_refuses_before_work_naming_settings(monkeypatch):
    monkeypatch.setattr(memory_plan, "device_memory_gib", lambda: ("Test GPU 12GB", 11.6))
    config = load_config("flux-lora", {})
    with pytest.raises(ConfigError, match="base_quantization=nf4") as error:
        memory_plan.check_before_training(config)
    assert "memory_check=false" in str(error.value)
    assert memory_plan.check_before_training(dataclasses.replace(config, memory_check=False)) is None
    assert memory_plan.check_before_training(load_config("flux-lora-12gb", {})).fits


def test_train_refuses_on_a_small_gpu_before_creating_the_run(monkeypatch, sample_subject, tmp_path):
    import trainers

    monkeypatch.setattr(memory_plan, "device_memory_gib", lambda: ("Test GPU", 0.5))
    config = tiny_config("lora")
    with pytest.raises(ConfigError, match="does NOT fit"):
        trainers.train(config, sample_subject, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_plan(capsys):
    from studio.cli import main

    code = main(["train", "--recipe", "flux-lora", "--plan", "--gpu-memory", "12"])
    out = capsys.readouterr().out
    assert code == 1 and "does NOT fit" in out and "--set base_quantization=nf4" in out
    code = main(["train", "--recipe", "flux-lora", "--plan", "--gpu-memory", "12", "--set", "base_quantization=nf4",
                 "--set", "sample_every=0", "--set", "validation=false"])
    assert code == 0 and "the run fits" in capsys.readouterr().out


def test_train_tab_text_per_card_without_a_gpu(monkeypatch):
    monkeypatch.setattr(memory_plan, "device_memory_gib", lambda: None)
    text = memory_plan.plan_markdown(load_config("flux-lora", {}))
    assert "12 GB: no (with base_quantization = nf4)" in text and "16 GB: no (with base_quantization = nf4)" in text
    text = memory_plan.plan_markdown(load_config("flux-lora", {"base_quantization": "nf4", "sample_every": 0, "validation": False}))
    assert "12 GB: fits" in text and "8 GB: no (with offload_activations = true)" in text  # NF4 alone does not fit 8 GB


def _emulated_rows() -> list[dict]:
    path = ROOT / "benchmarks" / "results" / "lowvram_memory_emulated.json"
    return [r for r in json.loads(path.read_text())["rows"] if "error" not in r]


@pytest.mark.parametrize("row", [r for r in _emulated_rows() if r["variant"] != "h200-era"],
                         ids=lambda r: f"{r['model']}-{r['quantization']}-swap{r['blocks_to_swap']}-{r['variant'] or 'plain'}")
def test_prediction_reproduces_the_emulated_peaks(row):
    """LoRA r=16 at 1024 px, quantized, block-swapped and/or offloaded, on the emulated CUDA device
    (benchmarks/lowvram_memory.py --emulate): the plan's step peak without the context allowance is within 5 %. For
    a swapped row it is not below, and above by at most its block-swap buffer: the plan keeps two of the largest
    swapped blocks in flight, an upper bound (at the step's peak the measured rows held one to two blocks' worth)."""
    base = {v: k for k, v in memory_plan.HUB_IDS.items()}[row["model"]]
    config = load_config(None, {"method": "lora", "base": base, "resolution": 1024, "lora_rank": 16, "lora_alpha": 16,
                                "mixed_precision": "bf16", "optimizer": "adamw", "gradient_checkpointing": True,
                                "base_quantization": row["quantization"], "blocks_to_swap": row["blocks_to_swap"],
                                "offload_activations": row["variant"] == "offload"})
    parts, _ = memory_plan.predict(config)
    plan = sum(v for k, v in parts.items() if k != "CUDA context and slack")
    if row["blocks_to_swap"]:
        assert row["peak_gib"] * 0.98 <= plan <= row["peak_gib"] * 1.05 + parts["block-swap buffer"]
    else:
        assert plan == pytest.approx(row["peak_gib"], rel=0.05)


@pytest.mark.parametrize("row", [r for r in _emulated_rows() if r.get("h200_peak_gib")], ids=lambda r: r["model"])
def test_emulated_device_reproduces_the_h200_peaks(row):
    """The emulation (dry compute, live tensor bytes, CUDA autocast's fp32 norms) against what the H200 measured for
    the same step: within 5 %."""
    assert row["peak_gib"] == pytest.approx(row["h200_peak_gib"], rel=0.05)


def test_nf4_weights_are_counted_as_the_h200_measured_them():
    """FLUX.1-dev's NF4 weights on the H200 (qlora_memory.json): codes + absmax as the plan counts them, within 3 %."""
    row = next(r for r in json.loads((ROOT / "benchmarks" / "results" / "qlora_memory.json").read_text())["rows"]
               if r["model"] == "flux-dev" and r["quantization"] == "nf4")
    config = load_config(None, {"method": "lora", "base": "black-forest-labs/FLUX.1-dev", "resolution": 1024,
                                "lora_rank": 16, "lora_alpha": 16, "mixed_precision": "bf16", "optimizer": "adamw",
                                "gradient_checkpointing": True, "base_quantization": "nf4"})
    parts, _ = memory_plan.predict(config)
    assert parts["frozen denoiser"] + parts["trainable weights"] == pytest.approx(row["weights_gib"], rel=0.03)
