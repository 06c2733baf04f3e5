"""SDXL end to end on the built-in tiny-sdxl: the model, the family's conditioning, every method."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from studio.config import load_config
from studio.families import family_for
from studio.models import builtin_path, load_base, load_tokenizers, materialize
from studio.models.vae import decode_in_fp32
from studio.runs import load_run, personalised_pipeline
from trainers import METHODS
from trainers.base import Trainer, prepare_run_dir
from trainers.data import load_image_tensors
from trainers.fixed_loss import fixed_noise_loss

RES = 64
LEARNING = {
    "lora": {"steps": 25, "learning_rate": 1e-2, "lora_rank": 8, "lora_alpha": 8, "train_text_encoder": True},
    "dreambooth": {"steps": 20, "learning_rate": 1e-3, "prior_preservation": True, "num_class_images": 2,
                   "class_image_steps": 3},
    "textual_inversion": {"steps": 25, "learning_rate": 5e-2, "num_vectors": 2},
}
# On a randomly initialised UNet the text path carries little of the loss, so new token rows alone
# lower it by about 1% (deterministically: everything is seeded); weights of the UNet do far more.
REQUIRED_RATIO = {"lora": 0.95, "dreambooth": 0.95, "textual_inversion": 0.995}
ENCODERS = ("text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def sdxl_base(tiny_data_dir):
    return load_base("tiny-sdxl")


@pytest.fixture(scope="module")
def trained(sample_subject, tmp_path_factory):
    runs = {}
    for method, overrides in LEARNING.items():
        directory = tmp_path_factory.mktemp(f"sdxl-{method}") / "run"
        config = tiny_config(method, base="tiny-sdxl", **overrides)
        prepare_run_dir(config, sample_subject, directory)
        trainer = Trainer(METHODS[method], config, directory)
        trainer.run()
        runs[method] = (trainer, directory)
    return runs


def test_tiny_sdxl_is_a_plain_sdxl_folder(sdxl_base):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(builtin_path("tiny-sdxl")))
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"
    assert len(pipe.tokenizer) == len(pipe.tokenizer_2) == 49408
    unet = pipe.unet.config
    assert unet.addition_embed_type == "text_time"
    assert unet.cross_attention_dim == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert unet.projection_class_embeddings_input_dim == (
        pipe.text_encoder_2.config.projection_dim + 6 * unet.addition_time_embed_dim
    )
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler" and pipe.vae.config.force_upcast
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of a toy", height=RES, width=RES, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (RES, RES)
    assert float(np.asarray(image, dtype=np.float32).std()) > 1.0
    assert sdxl_base.family.name == "sdxl" and sdxl_base.source == "builtin"


def test_family_conditions_exactly_like_the_pipeline(sdxl_base):
    pipe = sdxl_base.pipeline
    family = family_for(pipe)
    assert (family.default_resolution, family.kohya_base_model_version) == (1024, "sdxl_base_v1-0")
    assert family.modelspec_architecture == "stable-diffusion-xl-v1-base/lora"
    prompts = ["a sks toy", "a toy on the beach"]
    embedding = family.encode_prompts(pipe.components, prompts)
    with torch.no_grad():
        hidden, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(embedding.hidden, hidden)
    torch.testing.assert_close(embedding.pooled, pooled)
    added = family.unet_kwargs(embedding, RES)["added_cond_kwargs"]
    expected = pipe._get_add_time_ids((RES, RES), (0, 0), (RES, RES), dtype=torch.float32,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    assert torch.equal(added["time_ids"], expected.expand(2, -1))
    assert added["text_embeds"] is embedding.pooled


def test_folder_refs_tokenizers_and_vae_override(sdxl_base, tmp_path):
    folder = materialize("tiny-sdxl", tmp_path / "copy")
    base = load_base(str(folder))
    assert base.source == "folder" and base.family.name == "sdxl"
    assert [t.pad_token for t in load_tokenizers(str(folder))] == ["<|endoftext|>", "!"]
    swapped = load_base("tiny-sdxl", vae="tiny-sd")
    swapped_from = str(swapped.pipeline.vae.config._name_or_path)
    assert "tiny-sd-v" in swapped_from and "tiny-sdxl" not in swapped_from  # tiny-sd's VAE, not tiny-sdxl's
    assert "tiny-sdxl" in str(sdxl_base.pipeline.vae.config._name_or_path)
    assert swapped.extra["vae"] == "tiny-sd"


def test_force_upcast_vae_decodes_outside_autocast(sdxl_base):
    vae = sdxl_base.pipeline.vae
    latents = torch.randn(1, 4, RES // 8, RES // 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = vae.decode(latents).sample
        with torch.autocast("cpu", dtype=torch.bfloat16):
            unguarded = vae.decode(latents).sample
            with decode_in_fp32(vae):
                guarded = vae.decode(latents).sample
    assert unguarded.dtype == torch.bfloat16
    assert guarded.dtype == torch.float32 and torch.equal(guarded, reference)
    assert "decode" not in vars(vae)


def test_sdxl_recipes():
    for name, method in (("lora", "lora"), ("dreambooth", "dreambooth"), ("textual-inversion", "textual_inversion")):
        tiny = load_config(f"tiny-sdxl-{name}")
        assert (tiny.base, tiny.method, tiny.resolution) == ("tiny-sdxl", method, RES)
        real = load_config(f"sdxl-{name}")
        assert (real.base, real.method, real.resolution) == ("stabilityai/stable-diffusion-xl-base-1.0", method, 1024)
        assert real.vae == "madebyollin/sdxl-vae-fp16-fix"


def start_prompt(run) -> str:
    """The instance prompt as the run saw it at step 0 (TI placeholders = their initializer word)."""
    prompt = run.result["instance_prompt"]
    for token in sorted(run.result.get("placeholder_tokens", []), key=len, reverse=True):
        prompt = prompt.replace(token, run.config.initializer_token or run.subject.class_noun)
    return prompt


@pytest.mark.parametrize("method", list(LEARNING))
def test_method_learns_and_reloads(trained, sdxl_base, method):
    _, directory = trained[method]
    run = load_run(directory)
    assert run.result["family"] == "sdxl"
    images = load_image_tensors(run.subject.image_paths, RES)
    before = fixed_noise_loss(sdxl_base.pipeline, images, start_prompt(run))
    pipe = personalised_pipeline(run)
    if method == "lora":  # the adapter reached both text encoders, not only the UNet
        assert all(getattr(getattr(pipe, name), "peft_config", None) for name in ("unet", *ENCODERS))
    if method == "textual_inversion":
        assert all({"<sks>", "<sks>_1"} <= set(t.get_vocab()) for t in (pipe.tokenizer, pipe.tokenizer_2))
    after = fixed_noise_loss(pipe, images, run.prompt("a {0} {1}"))
    assert after < before * REQUIRED_RATIO[method], f"{method}: {before:.4f} -> {after:.4f}"
    pipe.set_progress_bar_config(disable=True)
    image = pipe(run.prompt("a {0} {1} on the beach"), height=RES, width=RES, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (RES, RES)


def test_lora_trains_both_encoders_and_leaves_base_weights_unchanged(trained, sdxl_base):
    trainer, directory = trained["lora"]
    for component in ("unet", *ENCODERS):
        current = trainer.components[component].state_dict()
        for name, tensor in getattr(sdxl_base.pipeline, component).state_dict().items():
            stem, _, leaf = name.rpartition(".")
            value = current.get(name, current.get(f"{stem}.base_layer.{leaf}"))
            assert value is not None and torch.equal(value.cpu(), tensor), f"{component}.{name} changed"
    saved = load_file(str(directory / "adapter" / "pytorch_lora_weights.safetensors"))
    assert {key.split(".")[0] for key in saved} == {"unet", *ENCODERS}
    assert all("lora" in key for key in saved)


def test_textual_inversion_changes_only_its_rows_in_both_encoders(trained, sdxl_base):
    trainer, directory = trained["textual_inversion"]
    for component in ENCODERS:
        base_encoder = getattr(sdxl_base.pipeline, component)
        encoder = trainer.components[component]
        original = base_encoder.get_input_embeddings().weight
        learned = encoder.get_input_embeddings().weight.detach().cpu()
        vocab = original.shape[0]
        assert learned.shape[0] == vocab + 2 and torch.equal(learned[:vocab], original), component
        current = encoder.state_dict()
        for name, tensor in base_encoder.state_dict().items():
            if "token_embedding" not in name:
                assert torch.equal(current[name].cpu(), tensor), f"{component}.{name}"
        saved = load_file(str(directory / "adapter" / f"learned_embeds_{component}.safetensors"))
        assert list(saved) == ["<sks>"] and torch.equal(saved["<sks>"], learned[vocab:].float())
        assert saved["<sks>"].shape[1] == base_encoder.config.hidden_size
    unet = trainer.components["unet"].state_dict()
    for name, tensor in sdxl_base.pipeline.unet.state_dict().items():
        assert torch.equal(unet[name].cpu(), tensor), name


def test_dreambooth_with_prior_preservation_saves_an_sdxl_folder(trained, sdxl_base):
    trainer, directory = trained["dreambooth"]
    assert len(trainer.class_paths) == 2 and all(p.is_file() for p in trainer.class_paths)
    index = json.loads((directory / "model" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    tuned = load_base(str(directory / "model")).pipeline
    base_unet = sdxl_base.pipeline.unet.state_dict()
    changed = [n for n, t in tuned.unet.state_dict().items() if not torch.equal(t, base_unet[n])]
    assert len(changed) > len(base_unet) // 2
    for component in ("vae", *ENCODERS):
        saved = getattr(tuned, component).state_dict()
        for name, tensor in getattr(sdxl_base.pipeline, component).state_dict().items():
            assert torch.equal(tensor, saved[name]), f"{component}.{name} changed"
