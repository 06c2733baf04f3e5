"""DreamBooth (with prior preservation) and textual inversion on the flow-matching families (tiny-flux,
tiny-sd3): what trains, what is saved, that it learns and reloads, and that the prior limits drift."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

import trainers
from studio.models import load_base
from studio.runs import load_run, personalised_pipeline
from trainers.data import load_image_tensors
from trainers.fixed_loss import fixed_noise_loss

RES = 64
BASES = {"flux": "tiny-flux", "sd3": "tiny-sd3"}
PIPELINES = {"flux": "FluxPipeline", "sd3": "StableDiffusion3Pipeline"}
TI_ENCODERS = {"flux": ("text_encoder",), "sd3": ("text_encoder", "text_encoder_2")}
DREAMBOOTH = {"steps": 20, "learning_rate": 1e-3, "batch_size": 1, "num_class_images": 2, "class_image_steps": 2}


@pytest.fixture(scope="module", params=list(BASES))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def base(family, tiny_data_dir):
    return load_base(BASES[family])


@pytest.fixture(scope="module")
def dreambooth_runs(family, sample_subject, tmp_path_factory):
    """Two runs alike but for prior preservation."""
    runs = {}
    for prior in (False, True):
        directory = tmp_path_factory.mktemp(f"{family}-db") / f"prior-{prior}"
        trainers.train(tiny_config("dreambooth", base=BASES[family], prior_preservation=prior, **DREAMBOOTH),
                       sample_subject, directory)
        runs[prior] = load_run(directory)
    return runs


@torch.no_grad()
def class_drift(tuned, base, images: torch.Tensor, prompt: str) -> float:
    """Mean squared difference of the tuned and base denoisers' predictions on ``images`` under the class
    prompt, at fixed noise and σ: how far the class itself moved."""
    from studio.families import family_for

    family = family_for(base)
    objective = family.objective(base.scheduler.config)
    vae = base.vae
    shift = float(vae.config.shift_factor or 0.0)
    latents = (vae.encode(images).latent_dist.mean - shift) * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    total = 0.0
    for fraction in (0.3, 0.6, 0.9):
        t = objective.timesteps_at(fraction, len(images), "cpu")
        noisy, _ = objective.noised(latents, noise, t)
        predictions = [
            family.predict(getattr(p, family.denoiser_name), noisy, t, family.encode_prompts(p.components, [prompt] * len(images)), RES)
            for p in (tuned, base)
        ]
        total += float((predictions[0] - predictions[1]).pow(2).mean())
    return total / 3


def test_dreambooth_saves_the_family_pipeline_and_learns(dreambooth_runs, base, family):
    run = dreambooth_runs[True]
    assert run.result["family"] == family
    index = json.loads((run.directory / "model" / "model_index.json").read_text())
    assert index["_class_name"] == PIPELINES[family]
    tuned = personalised_pipeline(run)
    reference = base.pipeline.transformer.state_dict()
    changed = [n for n, t in tuned.transformer.state_dict().items() if not torch.equal(t, reference[n])]
    assert len(changed) > len(reference) // 2
    for component in ("vae", *base.family.text_encoder_names):
        original = getattr(base.pipeline, component).state_dict()
        assert all(torch.equal(t, original[n]) for n, t in getattr(tuned, component).state_dict().items()), component
    images = load_image_tensors(run.subject.image_paths, RES)
    before = fixed_noise_loss(base.pipeline, images, run.prompt("a {0} {1}"))
    after = fixed_noise_loss(tuned, images, run.prompt("a {0} {1}"))
    assert after < before * 0.9, f"{before:.4f} -> {after:.4f}"


def test_prior_preservation_lowers_class_drift(dreambooth_runs, base, tiny_data_dir, family):
    folders = [f.parent for f in (tiny_data_dir / "class-images").glob("*/info.json")
               if json.loads(f.read_text())["base"] == BASES[family]]
    made = sorted(p for folder in folders for p in folder.glob("*.png"))
    assert made, "the prior run generated no class images"
    class_images = load_image_tensors(made[:2], RES)
    drift = {prior: class_drift(personalised_pipeline(run), base.pipeline, class_images, "a toy")
             for prior, run in dreambooth_runs.items()}
    print(f"class drift {family}: {drift}")
    assert drift[True] < drift[False] * 0.9, drift


def test_textual_inversion_changes_only_its_rows_and_reloads(family, base, sample_subject, tmp_path):
    directory = tmp_path / "ti"
    trainer_result = trainers.train(tiny_config("textual_inversion", base=BASES[family], steps=20, batch_size=1),
                                    sample_subject, directory)
    run = load_run(directory)
    assert trainer_result["placeholder_tokens"] == ["<sks>"]
    tuned = personalised_pipeline(run)
    for component in base.family.text_encoder_names:
        original = getattr(base.pipeline, component)
        loaded = getattr(tuned, component)
        vocab = original.get_input_embeddings().weight.shape[0]
        embedded = component in TI_ENCODERS[family]
        assert loaded.get_input_embeddings().weight.shape[0] == vocab + (1 if embedded else 0), component
        assert torch.equal(loaded.get_input_embeddings().weight[:vocab], original.get_input_embeddings().weight)
        if embedded:
            files = sorted((directory / "adapter").glob("learned_embeds*.safetensors"))
            name = "learned_embeds.safetensors" if len(files) == 1 else f"learned_embeds_{component}.safetensors"
            saved = load_file(str(directory / "adapter" / name))["<sks>"]
            assert torch.equal(loaded.get_input_embeddings().weight[vocab:].float(), saved.reshape(1, -1).float())
    reference = base.pipeline.transformer.state_dict()
    assert all(torch.equal(t, reference[n]) for n, t in tuned.transformer.state_dict().items())
    images = load_image_tensors(run.subject.image_paths, RES)
    before = fixed_noise_loss(base.pipeline, images, "a toy toy")  # <sks> starts as the class noun's row
    after = fixed_noise_loss(tuned, images, run.prompt("a {0} {1}"))
    assert after < before, f"{before:.5f} -> {after:.5f}"
