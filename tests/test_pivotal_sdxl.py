"""Pivotal tuning on SDXL: the export writes the LoRA beside the token's rows for both text encoders (diffusers:
one file per encoder; A1111/Forge/ComfyUI: one file with ``clip_l`` and ``clip_g``), and each pair, loaded with
diffusers' own loaders into a fresh tiny-sdxl pipeline, renders the run's image; without the token it does not."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file
from test_pivotal import render

import trainers
from studio.adapters import resolve_adapter
from studio.export import export_run
from studio.models import load_base
from studio.runs import load_run, personalised_pipeline

PROMPT = "a photo of <sks> toy"



@pytest.fixture(scope="module")
def sdxl_pivotal(sample_subject, tmp_path_factory):
    run = tmp_path_factory.mktemp("sdxl-pivotal") / "run"
    trainers.train(tiny_config("pivotal", base="tiny-sdxl", steps=6, batch_size=1), sample_subject, run)
    return run, export_run(run, "all", tmp_path_factory.mktemp("exports") / "sdxl-pivotal")


def test_sdxl_pivotal_export_reloads_with_both_encoders(sdxl_pivotal):
    """Each pair was loaded by diffusers' own loaders while exporting (every LoRA layer, the token's rows in
    both encoders, the run's image); the LoRA alone renders another image, so that check can fail."""
    run, result = sdxl_pivotal
    out = result.out_dir
    entries = {item["path"]: item for item in result.files}
    assert set(entries) == {"pytorch_lora_weights.safetensors", "learned_embeds_text_encoder.safetensors",
                            "learned_embeds_text_encoder_2.safetensors", "sks.safetensors", "sks-toy-pivotal.safetensors"}
    for entry in entries.values():
        assert entry["max_abs_diff"] <= 1e-3 and "embedding vectors in 2 text encoder(s)" in entry["check"], entry
    base = load_base("tiny-sdxl").pipeline
    pair = load_file(str(out / "sks.safetensors"))
    assert {k: tuple(v.shape) for k, v in pair.items()} == {
        "clip_l": (1, base.text_encoder.config.hidden_size), "clip_g": (1, base.text_encoder_2.config.hidden_size)}
    for encoder, key in (("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")):  # the same rows in both layouts
        assert torch.equal(load_file(str(out / f"learned_embeds_{encoder}.safetensors"))["<sks>"], pair[key])

    base.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    lora_only = render(base, PROMPT.replace("<sks>", "sks"))
    assert abs(lora_only - render(personalised_pipeline(load_run(run)), PROMPT)).max() > 1e-3, \
        "the token made no difference: the export's image check cannot tell"

    source = resolve_adapter(out)  # studio generate / the playground read the export folder as a pair
    assert source.companion is not None and source.companion.token == "<sks>"
