"""Export and evaluation of Flux and SD3 runs: every format the family writes reloads and renders the
studio's image; the formats it does not write yet are refused by name before any work."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

import trainers
from studio.export.exporter import export_run

BASES = {"flux": "tiny-flux", "sd3": "tiny-sd3"}
QUICK = {"steps": 3, "batch_size": 1, "validation": False}


@pytest.fixture(scope="module", params=list(BASES))
def family(request):
    return request.param


def _train(family, method, sample_subject, tmp_path_factory, **extra):
    directory = tmp_path_factory.mktemp(f"{family}-{method}") / "run"
    trainers.train(tiny_config(method, base=BASES[family], **QUICK, **extra), sample_subject, directory)
    return directory


def _checks(result) -> dict[str, str]:
    return {entry["path"]: entry["check"] for entry in result.files}


def test_lora_exports_every_layout_the_family_has(family, sample_subject, tmp_path_factory):
    run = _train(family, "lora", sample_subject, tmp_path_factory, train_text_encoder=True, learning_rate=1e-2)
    result = export_run(run, "all")
    assert result.formats == ["diffusers", "kohya", "peft"]
    checks = _checks(result)
    if family == "flux":  # BFL's names, qkv fused; CLIP-L under lora_te1_
        kohya = load_file(str(result.out_dir / "sks-toy-lora.safetensors"))
        assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in kohya
        assert "lora_unet_single_blocks_0_linear1.lora_up.weight" in kohya
        assert any(k.startswith("lora_te1_text_model_encoder_layers_0_") for k in kohya)
        assert "read back equal" in checks["sks-toy-lora.safetensors"]
    assert "max pixel diff 0.0e+00" in checks["pytorch_lora_weights.safetensors"]
    keys = load_file(str(result.out_dir / "pytorch_lora_weights.safetensors"))
    assert {k.split(".")[0] for k in keys} == {"transformer", *(("text_encoder",) if family == "flux" else
                                                                ("text_encoder", "text_encoder_2"))}
    assert (result.out_dir / "peft" / "transformer" / "adapter_config.json").is_file()
    verdicts = {f["path"]: f.get("consumers", {}) for f in json.loads((result.out_dir / "export.json").read_text())["files"]}
    if family == "flux":  # ComfyUI's and Forge's rules for BFL's fused layout, on both files
        for path in ("sks-toy-lora.safetensors", "pytorch_lora_weights.safetensors"):
            assert {verdicts[path][n]["loads"] for n in ("ComfyUI", "Forge")} == {"all"}, path
        assert verdicts["sks-toy-lora.safetensors"]["A1111"]["loads"] == "none"  # A1111 has no Flux model
        assert verdicts["sks-toy-lora.safetensors"]["kohya sd-scripts"]["loads"] == "all"
    else:  # tiny-sd3 is 2 blocks of width 64, where ComfyUI sizes MMDiT's qkv as 64 × depth; Forge has no SD3 map
        assert verdicts["pytorch_lora_weights.safetensors"]["ComfyUI"]["loads"] == "partial"
        assert verdicts["pytorch_lora_weights.safetensors"]["Forge"]["loads"] == "refused"
        # SAI's MMDiT names, qkv fused: both place them on whole weights, whatever the width
        kohya = load_file(str(result.out_dir / "sks-toy-lora.safetensors"))
        assert "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight" in kohya
        assert {verdicts["sks-toy-lora.safetensors"][n]["loads"] for n in ("ComfyUI", "Forge")} == {"all"}
        # diffusers reads nothing from it, silently: export.json says so, and this keeps that claim true
        from studio.models import load_base

        pipe = load_base(BASES[family]).pipeline
        before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
        pipe.load_lora_weights(str(result.out_dir / "sks-toy-lora.safetensors"), adapter_name="kohya")
        pipe.fuse_lora()
        assert all(torch.equal(v, before[k]) for k, v in pipe.transformer.state_dict().items())
        assert verdicts["sks-toy-lora.safetensors"]["diffusers"]["loads"] == "none"
        # studio generate splits the layout back itself: the same weights as the diffusers file gives
        from studio.adapters import load_adapter, resolve_adapter

        fused = {}
        for name in ("sks-toy-lora.safetensors", "pytorch_lora_weights.safetensors"):
            pipe = load_base(BASES[family]).pipeline
            load_adapter(pipe, resolve_adapter(result.out_dir / name), "a")
            pipe.fuse_lora(components=["transformer", "text_encoder", "text_encoder_2"])
            pipe.unload_lora_weights()  # the fused weights stay, under the modules' own names
            fused[name] = {c: getattr(pipe, c).state_dict() for c in ("transformer", "text_encoder", "text_encoder_2")}
        kohya_fused, diffusers_fused = fused.values()
        assert any(not torch.equal(kohya_fused["transformer"][k], v) for k, v in before.items())
        for component, tensors in diffusers_fused.items():
            assert all(torch.allclose(kohya_fused[component][k], v, atol=1e-6) for k, v in tensors.items()), component
    card = (result.out_dir / "README.md").read_text()
    assert ("flux" if family == "flux" else "sd3") in card.split("---")[1]  # the Hub's family tag
    assert json.loads((result.out_dir / "export.json").read_text())["family"] == family


def test_textual_inversion_exports_both_layouts(family, sample_subject, tmp_path_factory):
    run = _train(family, "textual_inversion", sample_subject, tmp_path_factory, learning_rate=5e-2)
    result = export_run(run, "all")
    files = _checks(result)
    assert "sks.safetensors" in files and all("max pixel diff 0.0e+00" in check for check in files.values())
    a1111 = load_file(str(result.out_dir / "sks.safetensors"))
    assert set(a1111) == ({"emb_params"} if family == "flux" else {"clip_l", "clip_g"})
    if family == "flux":  # T5 reads the typed word: the card says to type the trained token
        assert "T5" in (result.out_dir / "README.md").read_text()
    from studio.adapters import load_adapter, resolve_adapter
    from studio.models import load_base

    pipe = load_base(BASES[family]).pipeline  # the A1111 file through the playground's loader
    assert load_adapter(pipe, resolve_adapter(result.out_dir / "sks.safetensors"), "ti", token="<sks>") == ["<sks>"]
    row = pipe.tokenizer.convert_tokens_to_ids("<sks>")
    first = a1111.get("emb_params", a1111.get("clip_l"))
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[row].float(), first.reshape(-1).float())


def test_evaluation_scores_a_run(family, sample_subject, tmp_path_factory):
    from studio.cli import main as cli

    run = _train(family, "lora", sample_subject, tmp_path_factory, learning_rate=1e-2)
    assert cli(["eval", str(run), "--max-prompts", "1", "--images-per-prompt", "1", "--class-images", "1",
                "--clip", "tiny-clip", "--dino", "tiny-dino", "--steps", "2"]) == 0
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["scores"]["clip_t"] is not None and report["base_scores"]["dino"] is not None


def test_dreambooth_exports_a_folder_whose_t5_reloads_unchanged(family, sample_subject, tmp_path_factory):
    run = _train(family, "dreambooth", sample_subject, tmp_path_factory, learning_rate=1e-3)
    if family == "sd3":  # SAI's all-in-one file, read back by diffusers' own from_single_file
        single = export_run(run, "single-file", run / "exports" / "sf")
        entry = single.files[0]
        assert entry["path"] == "sks-toy-dreambooth.safetensors" and "max pixel diff 0.0e+00" in entry["check"]
        keys = load_file(str(single.out_dir / entry["path"]))
        assert {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "first_stage_model.decoder.conv_in.weight",
                "text_encoders.clip_g.transformer.text_projection.weight", "text_encoders.t5xxl.transformer.shared.weight"} <= set(keys)
        assert entry["consumers"]["diffusers from_single_file"]["loads"] == "all"
        assert entry["consumers"]["ComfyUI"]["loads"] == "refused" and "64 · depth" in entry["consumers"]["ComfyUI"]["why"]
        assert entry["consumers"]["A1111"]["loads"] == "none" and "SD3.5" in entry["consumers"]["A1111"]["why"]
    else:  # BFL's transformer file, read back by the inverse conversion; ComfyUI would build FLUX.1's widths
        single = export_run(run, "single-file", run / "exports" / "sf")
        entry = single.files[0]
        assert entry["path"] == "sks-toy-dreambooth-transformer.safetensors" and "max pixel diff 0.0e+00" in entry["check"]
        assert "double_blocks.0.img_attn.qkv.weight" in load_file(str(single.out_dir / entry["path"]))
        assert entry["consumers"]["ComfyUI"]["loads"] == "refused"  # tiny widths: said so, not claimed
    svd = export_run(run, "lora", run / "exports" / "svd")  # SVD LoRA: diffusers and the fused kohya layout
    kohya = next(f for f in svd.files if f["path"].endswith("-lora.safetensors"))
    assert "read back equal" in kohya["check"]
    assert {kohya["consumers"][n]["loads"] for n in ("ComfyUI", "Forge")} == {"all"}  # every Linear (SD3: the patch conv)
    result = export_run(run, "diffusers")
    assert "max pixel diff 0.0e+00" in _checks(result)["model_index.json"]
    t5 = "text_encoder_2" if family == "flux" else "text_encoder_3"
    keys = load_file(str(result.out_dir / t5 / "model.safetensors"))
    assert not any(k.startswith("text_model.") for k in keys)  # only CLIP's keys get CLIP's root
    assert all(torch.isfinite(v).all() for v in keys.values())
