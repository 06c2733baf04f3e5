"""LoRA exports: every format reloads through its consumer's loader and reproduces the studio's image."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from safetensors import safe_open

from studio.cli import main
from studio.errors import StudioError
from studio.export import export_run
from studio.export.lora_weights import read_diffusers_lora


@pytest.fixture
def lora_export(tiny_lora_export):
    return tiny_lora_export


def test_every_lora_format_reloads_identically(lora_export):
    out = lora_export.out_dir
    assert lora_export.formats == ["diffusers", "kohya", "peft"]
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "sks-toy-lora.safetensors").is_file()
    for component in ("unet", "text_encoder"):  # text-encoder LoRA was trained and is exported too
        assert (out / "peft" / component / "adapter_config.json").is_file()
        assert (out / "peft" / component / "adapter_model.safetensors").is_file()
    report = json.loads((out / "export.json").read_text())
    assert [f["path"] for f in report["files"]] == [
        "pytorch_lora_weights.safetensors", "sks-toy-lora.safetensors", "peft/unet", "peft/text_encoder"]
    for item in report["files"]:
        assert item["max_abs_diff"] <= item["tolerance"]
    assert report["files"][0]["layers"] == report["files"][1]["layers"] == report["lora_modules"]
    assert report["peft_layers"] == report["lora_modules"]


def test_model_card_front_matter(lora_export):
    text = (lora_export.out_dir / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["base_model"] == "tiny-sd"
    assert front["library_name"] == "diffusers"
    assert {"text-to-image", "lora"} <= set(front["tags"])
    assert front["instance_prompt"] == "a sks toy"
    assert front["widget"][0]["text"] == "a photo of sks toy"
    assert (lora_export.out_dir / front["widget"][0]["output"]["url"]).is_file()
    assert "load_lora_weights" in text and "models/Lora/" in text and "Not evaluated yet" in text


def test_kohya_names_follow_the_rule_for_every_adapted_module(lora_export, tiny_lora_run):
    weights = read_diffusers_lora(tiny_lora_run / "adapter" / "pytorch_lora_weights.safetensors")
    expected = set()
    for module in weights.modules:
        if module.component == "unet":
            expected.add("lora_unet_" + module.path.replace(".", "_"))
        else:
            expected.add("lora_te_text_model_" + module.path.replace(".", "_"))
    assert any(name.startswith("lora_te_") for name in expected)
    with safe_open(str(lora_export.out_dir / "sks-toy-lora.safetensors"), "pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
        down = handle.get_tensor("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight")
    names = {key.split(".")[0] for key in keys}
    assert names == expected
    for name in names:
        assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= set(keys)
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert down.shape == (4, 32)
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "4"
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert metadata["modelspec.trigger_phrase"] == "sks"


def test_failed_verification_leaves_nothing(tiny_lora_run, tmp_path, monkeypatch):
    import studio.export.lora_export as lora_export

    real = lora_export.save_kohya_lora

    def drop_one_module(weights, path, family, info, **kwargs):
        weights = type(weights)(weights.modules[1:])
        return real(weights, path, family, info, **kwargs)

    monkeypatch.setattr(lora_export, "save_kohya_lora", drop_one_module)
    out = tmp_path / "broken"
    with pytest.raises(StudioError, match="LoRA layers"):
        export_run(tiny_lora_run, "kohya", out)
    assert not out.exists()
    assert not any(tmp_path.iterdir())


def test_cli_refuses_to_overwrite_without_force(tiny_lora_run, lora_export, tmp_path, capsys):
    existing = lora_export.out_dir
    before = {p: p.stat().st_mtime_ns for p in existing.rglob("*")}
    assert main(["export", str(tiny_lora_run), "--format", "diffusers", "--out", str(existing)]) == 2
    assert "--force" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in existing.rglob("*")} == before
    out = tmp_path / "copy"
    shutil.copytree(existing, out)
    assert main(["export", str(tiny_lora_run), "--format", "webui", "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "export.json", "images", "sks-toy-lora.safetensors"]


def test_bad_format_and_offline_hub_fail_before_work(tiny_lora_run, tmp_path, monkeypatch):
    with pytest.raises(StudioError, match="single-file"):
        export_run(tiny_lora_run, "single-file", tmp_path / "x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StudioError, match="HF_HUB_OFFLINE"):
        export_run(tiny_lora_run, "kohya", tmp_path / "y", push_to_hub="someone/repo")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(StudioError, match="token"):
        export_run(tiny_lora_run, "kohya", tmp_path / "z", push_to_hub="someone/repo")
    assert not any(tmp_path.iterdir())
