"""Pivotal tuning on SDXL: the export writes the LoRA beside the token's rows for both text encoders (diffusers:
one file per encoder; A1111/Forge/ComfyUI: one file with ``clip_l`` and ``clip_g``), and each pair, loaded with
diffusers' own loaders into a fresh tiny-sdxl pipeline, renders the run's image; without the token it does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

import trainers
from studio.adapters import resolve_adapter
from studio.export import export_run
from studio.models import load_base
from studio.runs import load_run, personalised_pipeline

PROMPT = "a photo of <sks> toy"


def _image(pipe, prompt: str) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt, num_inference_steps=3, guidance_scale=5.0, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(3))
    return np.asarray(out.images[0])


@pytest.fixture(scope="module")
def sdxl_pivotal(sample_subject, tmp_path_factory):
    run = tmp_path_factory.mktemp("sdxl-pivotal") / "run"
    trainers.train(tiny_config("pivotal", base="tiny-sdxl", steps=6, batch_size=1), sample_subject, run)
    return run, export_run(run, "all", tmp_path_factory.mktemp("exports") / "sdxl-pivotal")


def _with_token(pipe, source, token: str) -> None:
    for encoder in ("text_encoder", "text_encoder_2"):
        tokenizer = encoder.replace("text_encoder", "tokenizer")
        pipe.load_textual_inversion(source(encoder), token=token, text_encoder=getattr(pipe, encoder),
                                    tokenizer=getattr(pipe, tokenizer))


def test_sdxl_pivotal_export_reloads_with_both_encoders(sdxl_pivotal):
    run, result = sdxl_pivotal
    out = result.out_dir
    names = {item["path"] for item in result.files}
    assert {"pytorch_lora_weights.safetensors", "learned_embeds_text_encoder.safetensors",
            "learned_embeds_text_encoder_2.safetensors", "sks.safetensors"} <= names
    pair = load_file(str(out / "sks.safetensors"))
    assert {k: tuple(v.shape) for k, v in pair.items()} == {
        "clip_l": (1, load_base("tiny-sdxl").pipeline.text_encoder.config.hidden_size),
        "clip_g": (1, load_base("tiny-sdxl").pipeline.text_encoder_2.config.hidden_size)}
    expected = _image(personalised_pipeline(load_run(run)), PROMPT)

    pipe = load_base("tiny-sdxl").pipeline  # diffusers: the LoRA, then load_textual_inversion once per encoder
    pipe.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    lora_only = _image(pipe, PROMPT.replace("<sks>", "sks"))
    _with_token(pipe, lambda encoder: str(out / f"learned_embeds_{encoder}.safetensors"), "<sks>")
    assert abs(_image(pipe, PROMPT) - expected).max() < 1e-4
    assert abs(lora_only - expected).max() > 1e-3, "the token made no difference: the test cannot tell"

    pipe = load_base("tiny-sdxl").pipeline  # the webui pair: kohya LoRA + clip_l/clip_g file, typed by its name
    kohya = next(n for n in names if n.endswith("-pivotal.safetensors"))
    pipe.load_lora_weights(str(out / kohya))
    _with_token(pipe, lambda encoder: pair["clip_l" if encoder == "text_encoder" else "clip_g"], "sks")
    assert abs(_image(pipe, PROMPT.replace("<sks>", "sks")) - expected).max() < 1e-4

    source = resolve_adapter(out)  # studio generate / the playground read the export folder as a pair
    assert source.companion is not None and source.companion.token == "<sks>"
