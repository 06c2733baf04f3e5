"""Flux.1 on the built-in tiny-flux: the model, the family's denoiser inputs and objective, LoRA training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config, train_until_cancelled
from safetensors.torch import load_file

import trainers
from studio.families import family_for, family_for_keys
from studio.families.flux import TRAINING_GUIDANCE, FluxFamily
from studio.families.objective import FlowMatchingObjective, FlowSampling
from studio.models import builtin_path, load_base, load_tokenizers
from studio.runs import load_run, personalised_pipeline
from trainers import METHODS
from trainers.base import Trainer, prepare_run_dir
from trainers.data import load_image_tensors
from trainers.fixed_loss import fixed_noise_loss

RES = 64
LORA = {"base": "tiny-flux", "steps": 25, "learning_rate": 1e-2, "lora_rank": 8, "lora_alpha": 8,
        "train_text_encoder": True, "batch_size": 1}


@pytest.fixture(scope="module")
def flux_base(tiny_data_dir):
    return load_base("tiny-flux")


@pytest.fixture(scope="module")
def flux_lora(sample_subject, tmp_path_factory):
    directory = tmp_path_factory.mktemp("flux-lora") / "run"
    config = tiny_config("lora", **LORA)
    prepare_run_dir(config, sample_subject, directory)
    trainer = Trainer(METHODS["lora"], config, directory)
    trainer.run()
    return trainer, directory


def test_tiny_flux_is_a_plain_flux_folder(flux_base):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(builtin_path("tiny-flux")))
    assert type(pipe.transformer).__name__ == "FluxTransformer2DModel" and pipe.transformer.config.guidance_embeds
    assert type(pipe.text_encoder_2).__name__ == "T5EncoderModel"
    assert len(pipe.tokenizer) == 49408 and len(pipe.tokenizer_2) == 32100
    assert pipe.tokenizer_2.model_max_length == 512 and pipe.tokenizer_2.eos_token == "</s>"
    pieces = pipe.tokenizer_2.convert_ids_to_tokens(pipe.tokenizer_2("a photo of a dog").input_ids)
    assert pieces == ["▁a", "▁photo", "▁of", "▁a", "▁dog", "</s>"]
    assert pipe.scheduler.config.use_dynamic_shifting and pipe.vae.config.shift_factor
    assert pipe.transformer.config.in_channels == 4 * pipe.vae.config.latent_channels
    assert [type(t).__name__ for t in load_tokenizers("tiny-flux")] == ["CLIPTokenizer", "T5Tokenizer"]
    assert flux_base.family.name == "flux" and flux_base.family.denoiser_name == "transformer"
    assert set(flux_base.components) == {"transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer",
                                         "tokenizer_2", "scheduler"}
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of a toy", height=RES, width=RES, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (RES, RES) and float(np.asarray(image, dtype=np.float32).std()) > 1.0


def test_family_detection_from_components_and_file_keys(flux_base):
    assert isinstance(family_for(flux_base.pipeline), FluxFamily)
    assert family_for_keys(["double_blocks.0.img_attn.qkv.weight"]).name == "flux"
    assert family_for_keys(["model.diffusion_model.double_blocks.0.img_attn.qkv.weight"]).name == "flux"
    assert family_for_keys(["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"]).name == "sd3"
    assert family_for_keys(["conditioner.embedders.1.model.ln_final.weight"]).name == "sdxl"
    assert family_for_keys(["model.diffusion_model.input_blocks.0.0.weight"]).name == "sd1"
    assert family_for_keys(["lora_unet_x.lora_down.weight"]) is None


def test_denoiser_inputs_are_the_pipelines(flux_base):
    """Packing, position ids and the transformer call agree with FluxPipeline's own code."""
    from diffusers import FluxPipeline

    pipe, family = flux_base.pipeline, flux_base.family
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    packed = FluxPipeline._pack_latents(latents, 2, 4, 8, 8)
    assert torch.equal(family.pack(latents), packed)
    assert torch.equal(family.unpack(packed, 8, 8), latents)
    assert torch.equal(family.image_ids(8, 8, "cpu", torch.float32), FluxPipeline._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32))
    with torch.no_grad():
        embedding = family.encode_prompts(flux_base.components, ["a dog", "a cat"])
        prompt_embeds, pooled, text_ids = pipe.encode_prompt(["a dog", "a cat"], None, max_sequence_length=512)
        assert torch.allclose(embedding.hidden, prompt_embeds) and torch.allclose(embedding.pooled, pooled)
        t = torch.tensor([250.0, 750.0])
        ours = family.predict(pipe.transformer, latents, t, embedding, RES)
        theirs = pipe.transformer(hidden_states=packed, timestep=t / 1000, guidance=torch.full((2,), TRAINING_GUIDANCE),
                                  pooled_projections=pooled, encoder_hidden_states=prompt_embeds, txt_ids=text_ids,
                                  img_ids=FluxPipeline._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32)).sample
    assert torch.allclose(ours, FluxPipeline._unpack_latents(theirs, RES, RES, 8), atol=1e-6)


def test_flow_matching_objective():
    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    objective = FlowMatchingObjective(FlowSampling(shift=3.0))
    t = torch.tensor([0.0, 500.0, 1000.0])
    noisy, target = objective.noised(latents, noise, t)
    assert torch.allclose(noisy[0], latents[0]) and torch.allclose(noisy[2], noise[2])
    assert torch.allclose(noisy[1], 0.5 * latents[1] + 0.5 * noise[1]) and torch.allclose(target, noise - latents)
    draws = objective.sample_timesteps(4000, torch.Generator().manual_seed(0), "cpu", image_tokens=16) / 1000
    assert 0 < draws.min() and draws.max() <= 1
    # logit-normal has median 0.5; a shift of 3 moves it to 3·0.5/(1+2·0.5) = 0.75
    assert abs(float(draws.median()) - 0.75) < 0.02
    flux = FluxFamily().objective({"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                                   "base_image_seq_len": 256, "max_image_seq_len": 4096})
    small = flux.sample_timesteps(4000, torch.Generator().manual_seed(0), "cpu", image_tokens=256)
    large = flux.sample_timesteps(4000, torch.Generator().manual_seed(0), "cpu", image_tokens=4096)
    assert float(large.median()) > float(small.median())  # bigger images train at noisier σ, as they sample


def test_lora_learns_and_reloads(flux_lora, flux_base):
    _, directory = flux_lora
    run = load_run(directory)
    assert run.result["family"] == "flux"
    images = load_image_tensors(run.subject.image_paths, RES)
    before = fixed_noise_loss(flux_base.pipeline, images, run.prompt("a {0} {1}"))
    pipe = personalised_pipeline(run)
    assert pipe.transformer.peft_config and pipe.text_encoder.peft_config
    after = fixed_noise_loss(pipe, images, run.prompt("a {0} {1}"))
    assert after < before * 0.9, f"{before:.4f} -> {after:.4f}"
    pipe.set_progress_bar_config(disable=True)
    image = pipe(run.prompt("a {0} {1} on the beach"), height=RES, width=RES, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (RES, RES)


def test_lora_changes_only_adapter_weights(flux_lora, flux_base):
    trainer, directory = flux_lora
    for component in ("transformer", "text_encoder", "text_encoder_2"):
        current = trainer.components[component].state_dict()
        for name, tensor in getattr(flux_base.pipeline, component).state_dict().items():
            stem, _, leaf = name.rpartition(".")
            value = current.get(name, current.get(f"{stem}.base_layer.{leaf}"))
            assert value is not None and torch.equal(value.cpu(), tensor), f"{component}.{name} changed"
    assert not getattr(trainer.components["text_encoder_2"], "peft_config", None)  # T5 carries no LoRA
    saved = load_file(str(directory / "adapter" / "pytorch_lora_weights.safetensors"))
    assert {key.split(".")[0] for key in saved} == {"transformer", "text_encoder"}
    assert all("lora" in key for key in saved)
    assert any(".single_transformer_blocks." in key for key in saved)


def test_lora_resume_is_exact(sample_subject, tmp_path):
    settings = LORA | {"steps": 6, "checkpoint_every": 3, "train_text_encoder": False}
    straight = tmp_path / "straight"
    trainers.train(tiny_config("lora", **settings), sample_subject, straight)
    interrupted = tmp_path / "interrupted"

    train_until_cancelled(tiny_config("lora", **settings), sample_subject, interrupted, at_step=3)
    trainers.resume(interrupted)
    expected = load_file(str(straight / "adapter" / "pytorch_lora_weights.safetensors"))
    resumed = load_file(str(interrupted / "adapter" / "pytorch_lora_weights.safetensors"))
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.allclose(expected[key], resumed[key], atol=1e-6, rtol=0), key


def test_adapter_runs_load_the_base_in_the_frozen_dtype():
    """On a GPU a LoRA/TI run loads the denoiser and text encoders straight into the frozen dtype (Flux.1-dev's
    transformer: 24 GB in host memory instead of 48), the VAE in fp32; DreamBooth and fp32 runs load fp32."""
    from studio.models import load_configured_base
    from trainers.placement import load_dtypes

    config = tiny_config("lora", base="tiny-flux", mixed_precision="bf16")
    pipe = load_configured_base(config, torch_dtype=load_dtypes(config, frozen_denoiser=True, cuda=True)).pipeline
    assert {pipe.transformer.dtype, pipe.text_encoder.dtype, pipe.text_encoder_2.dtype} == {torch.bfloat16}
    assert pipe.vae.dtype == torch.float32
    assert load_dtypes(config, frozen_denoiser=False, cuda=True) is None
    assert load_dtypes(config, frozen_denoiser=True, cuda=False) is None
    assert load_dtypes(tiny_config("lora", base="tiny-flux"), frozen_denoiser=True, cuda=True) is None
