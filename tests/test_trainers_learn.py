"""Training learns, and only the intended weights change (tiny-sd, CPU, seeded)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from studio.models import load_base
from studio.runs import load_run, personalised_pipeline
from studio.subjects import load_subject
from trainers import METHODS
from trainers.base import Trainer, prepare_run_dir
from trainers.data import load_image_tensors
from trainers.fixed_loss import fixed_noise_loss

LEARNING = {
    "lora": {"steps": 120},
    "dreambooth": {"steps": 80},
    "textual_inversion": {"steps": 120, "num_vectors": 2, "learning_rate": 0.05},
}


def run_trainer(method: str, subject, run_dir, **overrides) -> Trainer:
    config = tiny_config(method, **(LEARNING[method] | overrides))
    prepare_run_dir(config, subject, run_dir)
    trainer = Trainer(METHODS[method], config, run_dir)
    trainer.run()
    return trainer


def instance_loss(pipeline, run) -> float:
    images = load_image_tensors(run.subject.image_paths, run.config.resolution)
    return fixed_noise_loss(pipeline, images, run.prompt("a {0} {1}"))


def loss_before_and_after(directory) -> tuple[float, float]:
    """Fixed-noise loss on the instance images: the untrained base, then the trained result."""
    run = load_run(directory)
    return instance_loss(load_base(run.config.base).pipeline, run), instance_loss(personalised_pipeline(run), run)


@pytest.fixture(scope="module")
def trained(sample_subject, tmp_path_factory):
    runs = {}
    for method in LEARNING:
        directory = tmp_path_factory.mktemp(method) / "run"
        runs[method] = (run_trainer(method, sample_subject, directory), directory)
    return runs


@pytest.mark.parametrize("method", list(LEARNING))
def test_fixed_noise_loss_drops(trained, method):
    before, after = loss_before_and_after(trained[method][1])
    assert after < before * 0.95, f"{method}: fixed-noise loss {before:.4f} -> {after:.4f}"


def test_lora_keeps_base_weights_and_saves_only_adapters(trained):
    trainer, directory = trained["lora"]
    base = load_base("tiny-sd").pipeline
    trained_unet = trainer.components["unet"].state_dict()
    for name, tensor in base.unet.state_dict().items():
        wrapped = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        current = trained_unet.get(name, trained_unet.get(wrapped))
        assert current is not None, name
        assert torch.equal(current, tensor), f"base weight {name} changed"
    assert "text_encoder" not in trainer.components, "a frozen, cached text encoder should leave training memory"
    saved = load_file(str(directory / "adapter" / "pytorch_lora_weights.safetensors"))
    assert saved and all("lora" in key for key in saved), sorted(saved)[:5]
    assert all(key.startswith("unet.") for key in saved)


def test_dreambooth_changes_unet_only(trained):
    _, directory = trained["dreambooth"]
    base = load_base("tiny-sd").pipeline
    tuned = load_base(str(directory / "model")).pipeline
    changed = [n for n, t in base.unet.state_dict().items() if not torch.equal(t, tuned.unet.state_dict()[n])]
    assert len(changed) > len(base.unet.state_dict()) // 2
    for component in ("vae", "text_encoder"):
        for name, tensor in getattr(base, component).state_dict().items():
            assert torch.equal(tensor, getattr(tuned, component).state_dict()[name]), f"{component}.{name} changed"


def test_textual_inversion_changes_only_its_rows(trained):
    trainer, directory = trained["textual_inversion"]
    base = load_base("tiny-sd").pipeline
    encoder = trainer.components["text_encoder"]
    original = base.text_encoder.get_input_embeddings().weight
    learned = encoder.get_input_embeddings().weight.detach().cpu()
    vocab = original.shape[0]
    assert torch.equal(learned[:vocab], original), "an existing vocabulary row changed"
    new_rows = learned[vocab:]
    assert new_rows.shape[0] == 2
    trainable = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    # only the new rows carry gradients and optimizer state, not the 49,408-row vocabulary
    assert [tuple(p.shape) for p in trainable] == [(2, encoder.config.hidden_size)]
    for name, tensor in base.text_encoder.state_dict().items():
        if "token_embedding" not in name:
            assert torch.equal(encoder.state_dict()[name].cpu(), tensor), name
    for name, tensor in base.unet.state_dict().items():
        assert torch.equal(trainer.components["unet"].state_dict()[name].cpu(), tensor), name
    embeds = load_file(str(directory / "adapter" / "learned_embeds.safetensors"))
    assert list(embeds) == ["<sks>"] and torch.equal(embeds["<sks>"], new_rows.float())


@pytest.mark.parametrize("overrides", [{"optimizer": "adamw8bit"}, {"gradient_checkpointing": True}], ids=["adamw8bit", "checkpointing"])
def test_memory_saving_paths_learn(sample_subject, tmp_path, overrides):
    directory = tmp_path / "run"
    run_trainer("lora", sample_subject, directory, steps=80, **overrides)
    before, after = loss_before_and_after(directory)
    assert after < before * 0.95, f"{overrides}: {before:.4f} -> {after:.4f}"


def test_subject_copy_is_in_run(trained):
    _, directory = trained["lora"]
    assert len(load_subject(directory / "subject").image_paths) == 4
