"""Textual-inversion and DreamBooth exports, and a reload of every consumer format in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file


def test_ti_exports_diffusers_and_a1111(tiny_ti_export, tiny_ti_run):
    out = tiny_ti_export.out_dir
    learned = load_file(str(tiny_ti_run / "adapter" / "learned_embeds.safetensors"))
    assert load_file(str(out / "learned_embeds.safetensors")).keys() == {"<sks>"}
    a1111 = load_file(str(out / "sks.safetensors"))  # the webui's name is the file stem, without < >
    assert list(a1111) == ["emb_params"]
    assert a1111["emb_params"].shape == (2, 32)
    assert (a1111["emb_params"] == learned["<sks>"]).all()
    report = json.loads((out / "export.json").read_text())
    assert [f["vectors"] for f in report["files"]] == [2, 2]
    assert all(f["max_abs_diff"] <= f["tolerance"] for f in report["files"])
    card = (out / "README.md").read_text()
    assert "embeddings/" in card and "textual-inversion" in card


def test_dreambooth_exports_folder_single_file_and_svd_lora(tiny_dreambooth_export):
    out = tiny_dreambooth_export.out_dir
    report = json.loads((out / "export.json").read_text())
    files = {f["path"]: f for f in report["files"]}
    assert files["model_index.json"]["max_abs_diff"] == 0.0
    single = files["sks-toy-dreambooth.safetensors"]
    assert single["max_abs_diff"] <= single["tolerance"]
    with safe_open(str(out / "sks-toy-dreambooth.safetensors"), "pt") as handle:
        prefixes = {key.split(".")[0] for key in handle.keys()}
        assert len(list(handle.keys())) == single["tensors"]
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    svd = files["lora/pytorch_lora_weights.safetensors"]
    assert svd["tolerance"] is None and svd["layers"] == report["svd"]["modules"] > 0
    assert files["lora/sks-toy-dreambooth-lora.safetensors"]["layers"] == svd["layers"]
    # the extracted LoRA moves the base towards the fine-tune
    assert report["svd_image_difference"]["diffusers"] < report["base_image_difference"]
    assert "SVD extraction" in (out / "README.md").read_text()


RELOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np, torch
    from diffusers import StableDiffusionPipeline
    from peft import PeftModel

    base, lora, ti, dreambooth, out = sys.argv[1:]

    def image(pipe, prompt):
        pipe.set_progress_bar_config(disable=True)
        return pipe(prompt, height=64, width=64, num_inference_steps=3, guidance_scale=7.5,
                    generator=torch.Generator("cpu").manual_seed(0), output_type="np").images[0]

    pipe = StableDiffusionPipeline.from_pretrained(base)
    pipe.load_lora_weights(lora, weight_name="sks-toy-lora.safetensors")
    np.save(f"{out}/kohya.npy", image(pipe, "a photo of sks toy"))

    pipe = StableDiffusionPipeline.from_pretrained(base)
    PeftModel.from_pretrained(pipe.unet, f"{lora}/peft/unet")
    PeftModel.from_pretrained(pipe.text_encoder, f"{lora}/peft/text_encoder")
    np.save(f"{out}/peft.npy", image(pipe, "a photo of sks toy"))

    pipe = StableDiffusionPipeline.from_pretrained(base)
    pipe.load_textual_inversion(f"{ti}/sks.safetensors", token="sks")
    np.save(f"{out}/a1111.npy", image(pipe, "a photo of sks toy"))

    pipe = StableDiffusionPipeline.from_single_file(f"{dreambooth}/sks-toy-dreambooth.safetensors", config=dreambooth)
    np.save(f"{out}/single.npy", image(pipe, "a photo of sks toy"))
    """
)


def test_plain_diffusers_in_a_fresh_process_reproduces_the_studio_images(
    tiny_lora_export, tiny_ti_export, tiny_dreambooth_export, tmp_path
):
    from studio.models import builtin_path

    script = tmp_path / "reload.py"
    script.write_text(RELOAD_SCRIPT)
    dirs = [tiny_lora_export.out_dir, tiny_ti_export.out_dir, tiny_dreambooth_export.out_dir]
    subprocess.run([sys.executable, str(script), str(builtin_path("tiny-sd")), *map(str, dirs), str(tmp_path)],
                   check=True, timeout=300, capture_output=True)
    for name, export in (("kohya", dirs[0]), ("peft", dirs[0]), ("a1111", dirs[1]), ("single", dirs[2])):
        studio = np.asarray(Image.open(export / "images" / "example.png"), dtype=np.int16)
        fresh = (np.load(tmp_path / f"{name}.npy") * 255).round().clip(0, 255).astype(np.int16)
        assert np.abs(studio - fresh).max() <= 1, name


def test_ldm_names_for_an_sd15_shaped_unet_invert_diffusers_conversion():
    """Same block layout as SD1.5 (4 blocks, 2 layers, attention in the first three), tiny widths."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from studio.export.ldm_keys import UNET_PREFIX, unet_to_ldm

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(8, 8, 16, 16), layers_per_block=2, norm_num_groups=4,
        cross_attention_dim=8, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    state = unet.state_dict()
    ldm = unet_to_ldm(state, unet.config)
    for key in ("input_blocks.3.0.op.weight", "input_blocks.11.0.out_layers.3.weight", "middle_block.1.proj_in.weight",
                "middle_block.2.emb_layers.1.weight", "output_blocks.2.1.conv.weight", "output_blocks.5.2.conv.weight",
                "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight", "out.2.weight", "time_embed.0.weight"):
        assert UNET_PREFIX + key in ldm, key
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("bad", ["sd2", "flux"])  # Flux and SD3 write their own single file
def test_single_file_refuses_other_families(bad):
    from studio.errors import StudioError
    from studio.export.full_model import single_file_state
    from studio.families import family_named

    with pytest.raises(StudioError, match="SD1.x"):
        single_file_state(None, family_named(bad))


def test_eval_scores_are_read_defensively(tmp_path):
    from studio.export.model_card import read_eval_scores, render_card

    assert read_eval_scores(tmp_path) is None
    (tmp_path / "eval").mkdir()
    report = tmp_path / "eval" / "report.json"
    report.write_text("{broken")
    assert read_eval_scores(tmp_path) is None
    report.write_text(json.dumps({"overall": {"dino": 0.61, "clip_i": 0.8, "note": "x", "base": {"dino": 0.2}}}))
    scores = read_eval_scores(tmp_path)
    assert scores == {"dino": 0.61, "clip_i": 0.8, "base": {"dino": 0.2}}
    report.write_text(json.dumps({"scores": {"clip_t": 0.3, "div": None}}))
    assert read_eval_scores(tmp_path) == {"clip_t": 0.3}
    card = render_card({"method": "lora", "base": "b", "title": "t", "token": "sks", "instance_prompt": "a sks dog",
                        "prompt": "a photo of sks dog", "settings": {"lora_rank": 4, "num_vectors": 2}, "files": [],
                        "usage": [], "scores": scores | {"base": {"dino": 0.2}}})
    assert "| dino | 0.6100 |" in card and "| base.dino | 0.2000 |" in card
    assert "| lora_rank | 4 |" in card and "num_vectors" not in card  # settings of other methods are left out
