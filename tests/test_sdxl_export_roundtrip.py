"""SDXL runs exported in every format, each verified on write by reloading (as for SD1.x)."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from studio.export.lora_weights import read_diffusers_lora

ENCODERS = ("text_encoder", "text_encoder_2")


def report_of(export) -> dict:
    return json.loads((export.out_dir / "export.json").read_text())


def assert_verified(report: dict) -> None:
    assert report["family"] == "sdxl"
    for item in report["files"]:
        if item["tolerance"] is not None:  # an SVD LoRA is compared, not held to the tolerance
            assert item["max_abs_diff"] <= item["tolerance"], item


def sgm_name(component: str, path: str) -> str:
    """The kohya name by SDXL's SGM block numbering (two layers per block: 3 slots per level)."""
    if component != "unet":
        prefix = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}[component]
        if not path.startswith(("text_model.", "text_projection")):
            path = "text_model." + path
        return prefix + path.replace(".", "_")
    if m := re.fullmatch(r"down_blocks\.(\d)\.attentions\.(\d)\.(.+)", path):
        path = f"input_blocks.{1 + 3 * int(m[1]) + int(m[2])}.1.{m[3]}"
    elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", path):
        path = f"middle_block.1.{m[1]}"
    elif m := re.fullmatch(r"up_blocks\.(\d)\.attentions\.(\d)\.(.+)", path):
        path = f"output_blocks.{3 * int(m[1]) + int(m[2])}.1.{m[3]}"
    else:
        raise AssertionError(f"a LoRA run adapts attention layers only, not {path}")
    return "lora_unet_" + path.replace(".", "_")


def kohya_file(path):
    with safe_open(str(path), "pt") as handle:
        return list(handle.keys()), handle.metadata()


def test_sdxl_lora_every_format_reloads_identically(tiny_sdxl_lora_export, tiny_sdxl_lora_run):
    out = tiny_sdxl_lora_export.out_dir
    report = report_of(tiny_sdxl_lora_export)
    assert_verified(report)
    assert [f["path"] for f in report["files"]] == [
        "pytorch_lora_weights.safetensors", "sks-toy-lora.safetensors",
        "peft/unet", "peft/text_encoder", "peft/text_encoder_2"]
    assert report["files"][0]["layers"] == report["files"][1]["layers"] == report["lora_modules"] == report["peft_layers"]
    weights = read_diffusers_lora(out / "pytorch_lora_weights.safetensors")
    assert set(weights.components) == {"unet", *ENCODERS}
    for component in ENCODERS:  # the text-encoder LoRAs learned something (not just zero-initialised B)
        assert any(m.up.abs().max() > 0 for m in weights.by_component(component)), component
    with safe_open(str(out / "pytorch_lora_weights.safetensors"), "pt") as handle:
        assert any(key.startswith("text_encoder_2.") for key in handle.keys())
    front = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert {"stable-diffusion-xl", "lora"} <= set(front["tags"])


def test_sdxl_kohya_names_are_sgm_for_every_adapted_module(tiny_sdxl_lora_export, tiny_sdxl_lora_run):
    weights = read_diffusers_lora(tiny_sdxl_lora_run / "adapter" / "pytorch_lora_weights.safetensors")
    expected = {sgm_name(m.component, m.path) for m in weights.modules}
    keys, metadata = kohya_file(tiny_sdxl_lora_export.out_dir / "sks-toy-lora.safetensors")
    names = {key.split(".")[0] for key in keys}
    assert names == expected
    for name in names:
        assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= set(keys)
    assert {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
            "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k",
            "lora_unet_output_blocks_0_1_transformer_blocks_1_attn1_to_v",
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
            "lora_te2_text_model_encoder_layers_0_self_attn_out_proj"} <= names
    assert not any(part in name for name in names for part in ("down_blocks", "mid_block", "up_blocks", "lora_te_"))
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert metadata["ss_network_module"] == "networks.lora" and metadata["modelspec.trigger_phrase"] == "sks"


def test_sdxl_ti_exports_diffusers_and_a1111_clip_l_clip_g(tiny_sdxl_ti_export, tiny_sdxl_ti_run):
    out = tiny_sdxl_ti_export.out_dir
    report = report_of(tiny_sdxl_ti_export)
    assert_verified(report)
    assert [f["path"] for f in report["files"]] == [
        "learned_embeds_text_encoder.safetensors", "learned_embeds_text_encoder_2.safetensors", "sks.safetensors"]
    a1111 = load_file(str(out / "sks.safetensors"))
    assert sorted(a1111) == ["clip_g", "clip_l"]
    for key, encoder in (("clip_l", "text_encoder"), ("clip_g", "text_encoder_2")):
        learned = load_file(str(tiny_sdxl_ti_run / "adapter" / f"learned_embeds_{encoder}.safetensors"))["<sks>"]
        assert a1111[key].shape == learned.shape and a1111[key].shape[0] == 2
        assert (a1111[key] == learned).all()
    assert a1111["clip_l"].shape[1] != a1111["clip_g"].shape[1]  # 32 and 64 wide in tiny-sdxl
    assert all(f["vectors"] == 2 for f in report["files"])


def test_sdxl_dreambooth_exports_folder_sgm_single_file_and_svd_lora(tiny_sdxl_dreambooth_export):
    out = tiny_sdxl_dreambooth_export.out_dir
    report = report_of(tiny_sdxl_dreambooth_export)
    assert_verified(report)
    files = {f["path"]: f for f in report["files"]}
    assert files["model_index.json"]["max_abs_diff"] == 0.0
    single = files["sks-toy-dreambooth.safetensors"]
    keys, metadata = kohya_file(out / "sks-toy-dreambooth.safetensors")
    assert len(keys) == single["tensors"]
    assert {key.split(".")[0] for key in keys} == {"model", "first_stage_model", "conditioner"}
    assert {"model.diffusion_model.label_emb.0.0.weight", "model.diffusion_model.input_blocks.4.1.proj_in.weight",
            "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
            "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
            "conditioner.embedders.1.model.text_projection"} <= set(keys)
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base"

    svd = files["lora/pytorch_lora_weights.safetensors"]
    svd_kohya = files["lora/sks-toy-dreambooth-lora.safetensors"]
    assert svd["tolerance"] is None and svd["layers"] == svd_kohya["layers"] == report["svd"]["modules"] > 0
    keys, metadata = kohya_file(out / "lora" / "sks-toy-dreambooth-lora.safetensors")
    names = {key.split(".")[0] for key in keys}
    for prefix in ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_",
                   "lora_te1_text_model_", "lora_te2_text_model_"):
        assert any(name.startswith(prefix) for name in names), prefix
    # layers outside the transformer blocks, named as sd-scripts' SGM UNet names them
    assert {"lora_unet_input_blocks_0_0", "lora_unet_time_embed_0", "lora_unet_label_emb_0_0", "lora_unet_out_2",
            "lora_unet_input_blocks_3_0_op", "lora_te2_text_projection"} <= names
    assert not any(part in name for name in names for part in ("down_blocks", "mid_block", "up_blocks"))
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert report["svd_image_difference"]["diffusers"] < report["base_image_difference"]


def test_sdxl_kohya_block_off_by_one_fails_verification(tiny_sdxl_lora_run, tmp_path, monkeypatch):
    """Two same-shaped SGM blocks swapped still load, into the wrong layers: caught before anything is written."""
    from studio.export import ExportVerificationError, export_run
    from studio.families.sdxl import StableDiffusionXLFamily

    real = StableDiffusionXLFamily.kohya_lora_name
    swap = {"lora_unet_output_blocks_0_1_": "lora_unet_output_blocks_1_1_",
            "lora_unet_output_blocks_1_1_": "lora_unet_output_blocks_0_1_"}

    def swapped(self, component, path, unet_config=None):
        name = real(self, component, path, unet_config)
        old = next((old for old in swap if name.startswith(old)), None)
        return swap[old] + name[len(old):] if old else name

    monkeypatch.setattr(StableDiffusionXLFamily, "kohya_lora_name", swapped)
    with pytest.raises(ExportVerificationError, match="different factors"):
        export_run(tiny_sdxl_lora_run, "kohya", tmp_path / "broken")
    assert not any(tmp_path.iterdir())
