"""SD3.5 on the built-in tiny-sd3: the model, the family's conditioning (with and without T5), LoRA training."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from studio.families import family_for
from studio.families.sd3 import StableDiffusion3Family
from studio.models import builtin_path, load_base, load_tokenizers
from studio.runs import load_run, personalised_pipeline
from trainers import METHODS
from trainers.base import Trainer, prepare_run_dir
from trainers.data import load_image_tensors
from trainers.fixed_loss import fixed_noise_loss

RES = 64
ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
LORA = {"base": "tiny-sd3", "steps": 25, "learning_rate": 1e-2, "lora_rank": 8, "lora_alpha": 8,
        "train_text_encoder": True, "batch_size": 1}


@pytest.fixture(scope="module")
def sd3_base(tiny_data_dir):
    return load_base("tiny-sd3")


@pytest.fixture(scope="module")
def sd3_lora(sample_subject, tmp_path_factory):
    directory = tmp_path_factory.mktemp("sd3-lora") / "run"
    config = tiny_config("lora", **LORA)
    prepare_run_dir(config, sample_subject, directory)
    trainer = Trainer(METHODS["lora"], config, directory)
    trainer.run()
    return trainer, directory


def test_tiny_sd3_is_a_plain_sd3_folder(sd3_base):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(builtin_path("tiny-sd3")))
    assert [type(getattr(pipe, n)).__name__ for n in ENCODERS] == [
        "CLIPTextModelWithProjection", "CLIPTextModelWithProjection", "T5EncoderModel"]
    assert pipe.tokenizer_2.pad_token == "!" and len(pipe.tokenizer_3) == 32100
    assert pipe.scheduler.config.shift == 3.0 and pipe.vae.config.shift_factor
    assert [type(t).__name__ for t in load_tokenizers("tiny-sd3")] == ["CLIPTokenizer", "CLIPTokenizer", "T5Tokenizer"]
    assert isinstance(family_for(pipe), StableDiffusion3Family) and sd3_base.family.denoiser_name == "transformer"
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of a toy", height=RES, width=RES, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (RES, RES)


@pytest.mark.parametrize("with_t5", [True, False])
def test_conditioning_is_the_pipelines(sd3_base, with_t5):
    """CLIP-L/G penultimate states padded to T5's width then T5 (or zeros without it); pooled CLIP-L + CLIP-G."""
    from diffusers import StableDiffusion3Pipeline

    components = dict(sd3_base.pipeline.components)
    if not with_t5:
        components["text_encoder_3"] = components["tokenizer_3"] = None
    pipe = StableDiffusion3Pipeline(**components)
    family = sd3_base.family
    with torch.no_grad():
        ours = family.encode_prompts(pipe.components, ["a dog", "a red cat"])
        hidden, _, pooled, _ = pipe.encode_prompt(["a dog", "a red cat"], None, None, do_classifier_free_guidance=False)
    assert ours.hidden.shape == hidden.shape and torch.allclose(ours.hidden, hidden, atol=1e-6)
    assert torch.allclose(ours.pooled, pooled, atol=1e-6)


def test_lora_learns_changes_only_adapters_and_reloads(sd3_lora, sd3_base):
    trainer, directory = sd3_lora
    run = load_run(directory)
    assert run.result["family"] == "sd3"
    for component in ("transformer", *ENCODERS):
        current = trainer.components[component].state_dict()
        for name, tensor in getattr(sd3_base.pipeline, component).state_dict().items():
            stem, _, leaf = name.rpartition(".")
            value = current.get(name, current.get(f"{stem}.base_layer.{leaf}"))
            assert value is not None and torch.equal(value.cpu(), tensor), f"{component}.{name} changed"
    saved = load_file(str(directory / "adapter" / "pytorch_lora_weights.safetensors"))
    assert {key.split(".")[0] for key in saved} == {"transformer", "text_encoder", "text_encoder_2"}
    images = load_image_tensors(run.subject.image_paths, RES)
    before = fixed_noise_loss(sd3_base.pipeline, images, run.prompt("a {0} {1}"))
    pipe = personalised_pipeline(run)
    after = fixed_noise_loss(pipe, images, run.prompt("a {0} {1}"))
    assert after < before * 0.9, f"{before:.4f} -> {after:.4f}"


def test_trains_without_t5(sample_subject, tmp_path):
    """T5 is optional for SD3 as in diffusers: without it, zeros of T5's shape stand in, and LoRA trains."""
    base = load_base("tiny-sd3")
    base.pipeline.text_encoder_3 = base.pipeline.tokenizer_3 = None
    assert "text_encoder_3" not in base.components
    config = tiny_config("lora", **LORA | {"steps": 4, "train_text_encoder": False})
    directory = tmp_path / "run"
    prepare_run_dir(config, sample_subject, directory)
    trainer = Trainer(METHODS["lora"], config, directory, base=base)
    result = trainer.run()
    assert result["steps"] == 4 and trainer.cached_embeddings.hidden.shape[1] == 77 + 256
    saved = load_file(str(directory / "adapter" / "pytorch_lora_weights.safetensors"))
    assert {key.split(".")[0] for key in saved} == {"transformer"}
