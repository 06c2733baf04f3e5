"""Run directories, resume equivalence, cancellation, bad input, CLI and the 2-process Accelerate run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import tiny_config, train_until_cancelled
from safetensors.torch import load_file

import trainers
from studio.cli import main as cli
from studio.errors import ConfigError, StudioError
from trainers.events import read_events, run_state


def adapter_tensors(run_dir, method):
    name = {"lora": "pytorch_lora_weights.safetensors", "textual_inversion": "learned_embeds.safetensors"}[method]
    return load_file(str(run_dir / "adapter" / name))


@pytest.mark.parametrize("method", ["lora", "textual_inversion"])
def test_resume_after_interruption_matches_uninterrupted_run(sample_subject, tmp_path, method):
    settings = {"steps": 20, "checkpoint_every": 10, "batch_size": 1, "min_snr_gamma": 5.0, "noise_offset": 0.05}
    if method == "textual_inversion":
        settings["num_vectors"] = 2
    straight = tmp_path / "straight"
    trainers.train(tiny_config(method, **settings), sample_subject, straight)

    interrupted = tmp_path / "interrupted"

    train_until_cancelled(tiny_config(method, **settings), sample_subject, interrupted, at_step=10)
    assert run_state(read_events(interrupted)) == "cancelled"
    assert not (interrupted / "adapter").exists(), "a cancelled run must not present a result"
    trainers.resume(interrupted)

    expected, resumed = adapter_tensors(straight, method), adapter_tensors(interrupted, method)
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.allclose(expected[key], resumed[key], atol=1e-6, rtol=0), key
    assert run_state(read_events(interrupted)) == "finished"


def test_run_directory_contract(sample_subject, tmp_path):
    run = tmp_path / "run"
    trainers.train(tiny_config("lora", steps=10, sample_every=5, checkpoint_every=4, checkpoints_to_keep=2, log_every=1), sample_subject, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["method"] == "lora" and config["steps"] == 10
    events = read_events(run)
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 11))
    assert all({"loss", "lr", "it_s", "eta_s"} <= e.keys() for e in steps)
    assert [e["step"] for e in events if e["type"] == "sample"] == [0, 5, 10]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-000000", "step-000005", "step-000010"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000004", "step-000008"]
    assert events[-1]["type"] == "finished"
    result = json.loads((run / "result.json").read_text())
    assert result["method"] == "lora" and result["artifact"] == "adapter"
    assert not list(run.rglob("*.tmp"))


def test_bad_settings_are_rejected_with_the_key():
    with pytest.raises(ConfigError, match="'steps'"):
        tiny_config("lora", steps=0)
    with pytest.raises(ConfigError, match="divisible by 8"):
        tiny_config("lora", resolution=60)
    with pytest.raises(ConfigError, match="class_prompt is empty"):
        tiny_config("dreambooth", prior_preservation=True, class_prompt="  ")
    with pytest.raises(ConfigError, match="Unknown setting 'stepz'"):
        tiny_config("lora", stepz=3)
    with pytest.raises(ConfigError, match="one of lora, dreambooth, textual_inversion"):
        tiny_config("loraa")


def test_missing_or_empty_subject(tmp_path):
    with pytest.raises(StudioError, match="subject"):
        trainers.train(tiny_config("lora"), tmp_path / "nowhere", tmp_path / "run")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StudioError):
        trainers.train(tiny_config("lora"), empty, tmp_path / "run2")
    assert not (tmp_path / "run2").exists()


def test_failure_is_recorded(sample_subject, tmp_path):
    run = tmp_path / "run"
    seen: list[dict] = []
    with pytest.raises(StudioError, match="not-a-model"):
        trainers.train(tiny_config("lora", base="not-a-model"), sample_subject, run, listener=seen.append)
    assert seen[-1]["type"] == "failed" and "not-a-model" in seen[-1]["reason"]
    assert not run.exists()  # a failed start leaves nothing that blocks the same --out (issue 13)


def test_cli_train_and_resume(sample_subject, tmp_path, capsys):
    run = tmp_path / "run"
    code = cli(["train", "--recipe", "tiny-lora", "--subject", str(sample_subject), "--out", str(run), "--quiet",
                "--set", "steps=6", "--set", "sample_every=0", "--set", "checkpoint_every=3"])
    assert code == 0 and (run / "adapter" / "pytorch_lora_weights.safetensors").exists()
    assert cli(["train", "--resume", str(run), "--quiet"]) == 0
    assert cli(["train", "--recipe", "tiny-lora", "--subject", str(sample_subject), "--out", str(run)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli(["train", "--recipe", "tiny-lora", "--subject", str(sample_subject), "--out", str(tmp_path / "x"), "--set", "lora_rank=abc"]) == 2
    assert "'lora_rank'" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_accelerate_run(sample_subject, tmp_path, tiny_data_dir):
    run = tmp_path / "run"
    env = dict(os.environ, STUDIO_DATA_DIR=str(tiny_data_dir), OMP_NUM_THREADS="1")
    # accelerate's multi-process launcher (torchrun); without a GPU the processes join a gloo group.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "studio", "train",
               "--recipe", "tiny-lora", "--subject", str(sample_subject), "--out", str(run), "--quiet",
               "--set", "steps=8", "--set", "sample_every=0", "--set", "checkpoint_every=4"]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert completed.returncode == 0, completed.stderr[-3000:]
    replicas = [json.loads(p.read_text()) for p in sorted((run / "replicas").glob("rank-*.json"))]
    assert len(replicas) == 2 and replicas[0]["sha256"] == replicas[1]["sha256"]
    assert (run / "adapter" / "pytorch_lora_weights.safetensors").exists()
    assert read_events(run)[-1]["type"] == "finished"


def test_single_file_base_trains_offline_with_base_config(tiny_dreambooth_export, sample_subject, tmp_path):
    """A .safetensors checkpoint as the base: offline it needs base_config (the error says so); with it,
    training, the personalised pipeline and the run's untrained base all load it."""
    from studio.errors import ModelLoadError
    from studio.models import load_configured_base
    from studio.runs import base_pipeline, load_run, personalised_pipeline

    folder = tiny_dreambooth_export.out_dir  # the exported diffusers folder, beside its single file
    checkpoint = folder / "sks-toy-dreambooth.safetensors"
    assert checkpoint.is_file() and (folder / "model_index.json").is_file()
    with pytest.raises(ModelLoadError, match="base_config"):
        load_configured_base(tiny_config("lora", base=str(checkpoint)))
    run = tmp_path / "run"
    trainers.train(tiny_config("lora", base=str(checkpoint), base_config=str(folder), steps=2), sample_subject, run)
    loaded = load_run(run)
    assert loaded.config.base_config == str(folder)
    assert type(personalised_pipeline(loaded)).__name__ == "StableDiffusionPipeline"
    assert base_pipeline(loaded).unet.config.sample_size == 8


def test_frozen_weights_in_bf16_keep_trainable_tensors_in_fp32(sample_subject, tmp_path):
    """frozen_weights_dtype=bf16 on SDXL: the UNet's base weights and the text encoders are held in bf16,
    LoRA tensors stay fp32 (master weights), SDXL's VAE stays fp32 as its config asks; the run trains,
    renders its samples and saves fp32 adapters."""
    from trainers import METHODS
    from trainers.base import Trainer, prepare_run_dir

    config = tiny_config("lora", base="tiny-sdxl", frozen_weights_dtype="bf16", steps=2, batch_size=1, sample_every=2,
                         sample_steps=2)
    run = tmp_path / "run"
    prepare_run_dir(config, sample_subject, run)
    trainer = Trainer(METHODS["lora"], config, run)
    trainer.run()
    unet_dtypes = {("lora_" in name, p.dtype) for name, p in trainer.components["unet"].named_parameters()}
    assert unet_dtypes == {(True, torch.float32), (False, torch.bfloat16)}
    assert trainer.components["vae"].dtype == torch.float32
    assert {encoder.dtype for encoder in trainer.family.text_encoders(trainer.components)} == {torch.bfloat16}
    losses = [e["loss"] for e in read_events(run) if e["type"] == "step"]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert len(list((run / "samples").glob("step-*"))) == 2  # step 0 and step 2
    assert {t.dtype for t in adapter_tensors(run, "lora").values()} == {torch.float32}
