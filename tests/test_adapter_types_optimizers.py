"""DoRA, LoKr, LoHa, Prodigy, schedule-free AdamW and EMA on tiny-sd: each learns, only the intended
weights change, and a run stopped at a checkpoint and resumed ends where an uninterrupted one does."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config, train_until_cancelled
from safetensors.torch import load_file
from test_trainers_learn import loss_before_and_after

import trainers
from studio.errors import ConfigError
from studio.models import load_base
from trainers import METHODS
from trainers.base import Trainer, prepare_run_dir

# Tensor names of each adapter type, as peft names them (and so the run's files hold them).
ADAPTER_TENSORS = {
    "dora": ("lora_A", "lora_B", "lora_magnitude_vector"),
    "lokr": ("lokr_w1", "lokr_w2"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
}
LEARNING = {
    "dora": {"adapter_type": "dora", "steps": 60},
    "lokr": {"adapter_type": "lokr", "steps": 60},
    "loha": {"adapter_type": "loha", "steps": 60},
    "prodigy": {"optimizer": "prodigy", "learning_rate": 1.0, "steps": 60},
    "schedulefree": {"optimizer": "schedulefree_adamw", "steps": 60},
    "ema": {"ema_decay": 0.9, "steps": 60},
}


def _trainer(subject, run_dir, **overrides) -> Trainer:
    config = tiny_config("lora", **overrides)
    prepare_run_dir(config, subject, run_dir)
    trainer = Trainer(METHODS["lora"], config, run_dir)
    trainer.run()
    return trainer


@pytest.fixture(scope="module")
def trained(sample_subject, tmp_path_factory):
    return {name: (_trainer(sample_subject, tmp_path_factory.mktemp(name) / "run", **overrides),)
            for name, overrides in LEARNING.items()}


@pytest.mark.parametrize("name", list(LEARNING))
def test_fixed_noise_loss_drops(trained, name):
    trainer = trained[name][0]
    before, after = loss_before_and_after(trainer.run_dir)
    assert after < before * 0.95, f"{name}: fixed-noise loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("kind", list(ADAPTER_TENSORS))
def test_only_the_adapter_type_weights_train_and_are_saved(trained, kind):
    trainer = trained[kind][0]
    base = load_base("tiny-sd").pipeline.unet.state_dict()
    unet = trainer.components["unet"]
    trainable = [name for name, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all(any(t in name for t in ADAPTER_TENSORS[kind]) for name in trainable), trainable[:4]
    assert {t for t in ADAPTER_TENSORS[kind] if any(t in name for name in trainable)} == set(ADAPTER_TENSORS[kind])
    live = unet.state_dict()
    for name, tensor in base.items():  # peft wraps a target layer: its weight moves under base_layer
        wrapped = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(live.get(name, live.get(wrapped)), tensor), f"base weight {name} changed"
    result = json.loads((trainer.run_dir / "result.json").read_text())
    assert result["adapter_type"] == kind
    saved = _adapter_file(trainer.run_dir, kind)
    in_file = ADAPTER_TENSORS[kind] + ((".lora.down.", ".lora.up.") if kind == "dora" else ())  # diffusers' spelling
    assert saved and all(any(t in key for t in in_file) for key in saved), sorted(saved)[:4]
    assert {t for t in ADAPTER_TENSORS[kind] if any(t in key for key in saved)} >= {ADAPTER_TENSORS[kind][-1]}
    if kind != "dora":  # LoKr/LoHa: peft's own adapter folder, with its type
        config = json.loads((trainer.run_dir / "adapter" / "peft" / "unet" / "adapter_config.json").read_text())
        assert config["peft_type"] == kind.upper()


def _adapter_file(run_dir, kind: str) -> dict[str, torch.Tensor]:
    if kind in ("lora", "dora"):
        return load_file(str(run_dir / "adapter" / "pytorch_lora_weights.safetensors"))
    return load_file(str(run_dir / "adapter" / "peft" / "unet" / "adapter_model.safetensors"))


@pytest.mark.parametrize("overrides", [
    {"adapter_type": "lokr", "optimizer": "schedulefree_adamw", "ema_decay": 0.9},
    {"adapter_type": "dora", "optimizer": "prodigy", "learning_rate": 1.0, "lr_warmup_steps": 3},
    {"adapter_type": "loha", "ema_decay": 0.8, "ema_weights": "raw"},
], ids=["lokr-schedulefree-ema", "dora-prodigy", "loha-ema-raw"])
def test_resume_is_exact(sample_subject, tmp_path, overrides):
    settings = {"steps": 12, "checkpoint_every": 6, "batch_size": 1} | overrides
    kind = overrides["adapter_type"]
    straight = tmp_path / "straight"
    trainers.train(tiny_config("lora", **settings), sample_subject, straight)
    interrupted = tmp_path / "interrupted"

    train_until_cancelled(tiny_config("lora", **settings), sample_subject, interrupted, at_step=6)
    trainers.resume(interrupted)
    folders = [""] + (["weights-raw", "weights-ema"] if overrides.get("ema_decay") else [])
    for folder in folders:
        if folder and not (straight / folder).exists():
            continue
        expected, resumed = _adapter_file(straight / folder, kind), _adapter_file(interrupted / folder, kind)
        assert expected.keys() == resumed.keys()
        for key in expected:
            assert torch.allclose(expected[key], resumed[key], atol=1e-6, rtol=0), (folder, key)


def test_ema_result_and_raw_weights(trained):
    """EMA on: the result holds the average, weights-raw the raw weights (they differ), and the average is
    what the trainer kept."""
    from trainers.checkpoint_view import checkpoint_run

    trainer = trained["ema"][0]
    run = trainer.run_dir
    result = json.loads((run / "result.json").read_text())
    assert result["weights"] == "ema" and result["other_weights"] == {"weights": "raw", "run": "weights-raw"}
    ema, raw = _adapter_file(run, "lora"), _adapter_file(run / "weights-raw", "lora")
    assert ema.keys() == raw.keys()
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    live = {k: v for k, v in trainer.method.trainable_state().items()}
    averaged = trainer.ema.weights()
    assert live.keys() == averaged.keys() and any(not torch.equal(live[k], averaged[k]) for k in live)
    assert checkpoint_run(run, "raw") == (run / "weights-raw").resolve()
    assert checkpoint_run(run, "ema") == run.resolve()


def test_ema_average_follows_its_decay():
    from trainers.ema import ExponentialAverage

    class One:
        def __init__(self):
            self.module = torch.nn.Linear(2, 1, bias=False)

        def trainable_modules(self):
            return {"m": self.module}

        def trainable_state(self):
            return {"m.weight": self.module.weight.detach().clone()}

    method = One()
    start = method.module.weight.detach().clone()
    ema = ExponentialAverage(method, decay=0.5, on_cpu=True)
    with torch.no_grad():
        method.module.weight.add_(1.0)
    ema.update()  # warm-up decay min(0.5, 1/10) = 0.1: 0.9 of the way to the new weights
    assert torch.allclose(ema.shadow["m.weight"], start + 0.9)
    with ema.applied():
        assert torch.equal(method.module.weight.detach(), start + 0.9)
    assert torch.equal(method.module.weight.detach(), start + 1.0)  # the raw weights back exactly


def test_optimizer_settings_are_checked(monkeypatch):
    from trainers.optim import build_optimizer

    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))]}]
    with pytest.raises(ConfigError, match="lr_scheduler=constant"):
        build_optimizer(tiny_config("lora", optimizer="schedulefree_adamw", lr_scheduler="cosine"), groups)
    import importlib

    real = importlib.import_module

    def missing(name, *args, **kwargs):
        if name == "prodigyopt":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(ConfigError, match="pip install prodigyopt"):
        build_optimizer(tiny_config("lora", optimizer="prodigy"), [{"params": [torch.nn.Parameter(torch.zeros(2))]}])
