"""EMA on a DreamBooth run (tiny-sd): the result holds the average and ``weights-raw/`` the raw weights (they
differ, and each is the set the trainer kept); both export (``--checkpoint ema`` / ``raw``) and reload with the
run's image; a run stopped at a checkpoint and resumed ends with the same weights in both sets."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config, train_until_cancelled
from safetensors.torch import load_file

import trainers
from studio.export import export_run
from trainers import METHODS
from trainers.base import Trainer, prepare_run_dir
from trainers.checkpoint_view import checkpoint_run

SETTINGS = {"steps": 6, "batch_size": 1, "ema_decay": 0.9, "checkpoint_every": 3}
UNET_FILE = "model/unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def ema_run(sample_subject, tmp_path_factory):
    directory = tmp_path_factory.mktemp("db-ema") / "run"
    config = tiny_config("dreambooth", **SETTINGS)
    prepare_run_dir(config, sample_subject, directory)
    trainer = Trainer(METHODS["dreambooth"], config, directory)
    trainer.run()
    return trainer


def test_ema_and_raw_weights_are_each_the_kept_set(ema_run):
    run = ema_run.run_dir
    result = json.loads((run / "result.json").read_text())
    assert result["weights"] == "ema" and result["other_weights"] == {"weights": "raw", "run": "weights-raw"}
    ema, raw = load_file(str(run / UNET_FILE)), load_file(str(run / "weights-raw" / UNET_FILE))
    assert ema.keys() == raw.keys()
    assert sum(not torch.equal(ema[k], raw[k]) for k in ema) > len(ema) // 2
    averaged, live = ema_run.ema.weights(), ema_run.method.trainable_state()
    for key, value in averaged.items():
        name = key.removeprefix("unet.")
        assert torch.equal(ema[name], value) and torch.equal(raw[name], live[key]), name


def test_ema_and_raw_exports_reload(ema_run, tmp_path):
    run = ema_run.run_dir
    unets = {}
    for choice in ("ema", "raw"):
        result = export_run(checkpoint_run(run, choice), "diffusers", tmp_path / choice)
        (entry,) = [e for e in result.files if e["format"] == "full model (diffusers folder)"]
        assert entry["max_abs_diff"] <= 1e-3, entry  # reloaded by diffusers: the image of that set of weights
        unets[choice] = load_file(str(next(result.out_dir.rglob("unet/diffusion_pytorch_model.safetensors"))))
    expected = load_file(str(run / UNET_FILE))
    assert all(torch.equal(unets["ema"][k], expected[k]) for k in expected)
    assert any(not torch.equal(unets["ema"][k], unets["raw"][k]) for k in expected)


def test_resume_with_ema_is_exact(ema_run, sample_subject, tmp_path):
    interrupted = tmp_path / "interrupted"

    train_until_cancelled(tiny_config("dreambooth", **SETTINGS), sample_subject, interrupted, at_step=3)
    trainers.resume(interrupted)
    for folder in ("", "weights-raw"):
        expected = load_file(str(ema_run.run_dir / folder / UNET_FILE))
        resumed = load_file(str(interrupted / folder / UNET_FILE))
        assert expected.keys() == resumed.keys()
        for key in expected:
            assert torch.allclose(expected[key], resumed[key], atol=1e-6, rtol=0), (folder or "ema", key)
