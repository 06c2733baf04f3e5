"""Validation while training, on tiny real runs: scores at each checkpoint, the best one chosen and
kept, resume keeping the history, the time budget, early stop, and eval/export defaulting to the best."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

import trainers
from studio.errors import StudioError
from studio.validation.history import flags, validation_records
from studio.validation.rules import RuleSettings, choose_best
from trainers.checkpoint_view import checkpoint_run
from trainers.events import read_events

FAST = {"validation_steps": 3, "validation_images_per_prompt": 1, "validation_prompts": 2, "validation_budget": 100.0,
        "validation_clip": "tiny-clip", "validation_dino": "tiny-dino"}


def _config(method="dreambooth", **overrides):
    values = {"steps": 30, "checkpoint_every": 10, "batch_size": 1, **FAST}
    values.update(overrides)
    return tiny_config(method, **values)


@pytest.fixture(scope="module")
def prior_run(sample_subject, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("validation") / "db-prior"
    config = _config(prior_preservation=True, num_class_images=2, class_image_steps=3, checkpoints_to_keep=1)
    result = trainers.train(config, sample_subject, run_dir)
    return run_dir, result


def test_every_checkpoint_is_scored_with_losses_and_subject_scores(prior_run):
    run_dir, result = prior_run
    records = validation_records(run_dir)
    assert [r["step"] for r in records] == [0, 10, 20, 30]
    assert [r["candidate"] for r in records] == [False, True, True, True]
    for r in records:
        assert r["loss"] > 0 and r["class_loss"] > 0  # prior preservation: class drift as a number
        assert set(r["scores"]) == {"clip_i", "clip_t", "dino", "pres", "div"}
        assert all(isinstance(r["scores"][k], float) for k in ("clip_i", "clip_t", "dino", "pres"))
        assert len(r["images"]) == 2 + 2 and all((run_dir / p).is_file() for p in r["images"])  # 2 prompts + 2 class
    # training lowers the fixed-noise loss and brings the subject's look in (constructed tiny backbones)
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["scores"]["dino"] > records[0]["scores"]["dino"]
    assert (run_dir / "validation" / "contact_sheet.png").is_file()


def test_the_result_records_the_rule_and_its_choice_and_the_best_checkpoint_is_kept(prior_run):
    run_dir, result = prior_run
    records = validation_records(run_dir)
    expected = choose_best(records, RuleSettings())
    best = result["best_checkpoint"]
    assert best["step"] == expected["step"] and best["reason"] == expected["reason"]
    assert "highest DINO" in best["rule"] and best["metric"] == "dino"
    excluded = {e["step"] for e in best["excluded"]}
    eligible = [r for r in records if r["candidate"] and r["step"] not in excluded]
    assert best["value"] == max(r["scores"]["dino"] for r in eligible)
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "step-000020" in kept  # checkpoints_to_keep=1: the newest, plus the best while it was best
    if best["final"]:
        assert best["checkpoint"] is None
    else:
        assert best["checkpoint"] == f"checkpoints/step-{best['step']:06d}"
        assert f"step-{best['step']:06d}" in kept  # protected from pruning
    assert json.loads((run_dir / "result.json").read_text())["best_checkpoint"] == best


def test_a_checkpoint_opens_as_a_finished_run_with_that_checkpoints_weights(prior_run):
    run_dir, _ = prior_run
    assert checkpoint_run(run_dir, "final") == run_dir.resolve()
    view = checkpoint_run(run_dir, 20)
    assert view == (run_dir / "checkpoints" / "step-000020" / "run").resolve()
    result = json.loads((view / "result.json").read_text())
    assert result["steps"] == 20 and result["checkpoint_of"]["step"] == 20
    saved = load_file(str(view / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    trained = load_file(str(run_dir / "checkpoints" / "step-000020" / "trainable.safetensors"))
    name = next(k for k in trained if k.startswith("unet.") and k.endswith("conv_in.weight"))
    assert torch.equal(saved[name.removeprefix("unet.")], trained[name])
    with pytest.raises(StudioError, match="no checkpoint at step 15 \\(kept: step-"):
        checkpoint_run(run_dir, 15)
    with pytest.raises(StudioError, match="best, final, a step number"):
        checkpoint_run(run_dir, "latest")


def test_resume_keeps_the_history_and_the_budget_accounting(sample_subject, tmp_path):
    run_dir = tmp_path / "run"

    def stop_at_20(event):
        if event["type"] == "validation" and event["step"] == 20:
            raise KeyboardInterrupt

    with pytest.raises(trainers.TrainingCancelled):
        trainers.train(_config("lora"), sample_subject, run_dir, listener=stop_at_20)
    before = validation_records(run_dir)
    assert [r["step"] for r in before] == [0, 10, 20]
    result = trainers.resume(run_dir)
    after = validation_records(run_dir)
    assert [r["step"] for r in after] == [0, 10, 20, 30]
    assert [r["time"] for r in after[:3]] == [r["time"] for r in before]  # the first session's records kept
    assert after[-1]["validation_s"] > before[-1]["validation_s"] and after[-1]["train_s"] > before[-1]["train_s"]
    assert result["best_checkpoint"]["step"] == choose_best(after, RuleSettings())["step"]


def test_the_budget_skips_scores_it_cannot_afford_and_says_so(sample_subject, tmp_path):
    run_dir = tmp_path / "run"
    trainers.train(_config("lora", validation_budget=0.0), sample_subject, run_dir)
    records = validation_records(run_dir)
    assert records[0]["scores"] is not None  # the untrained base is always measured
    for r in records[1:]:
        assert r["scores"] is None and r["loss"] > 0
        assert "keep validation within 0% of the training time" in r["skipped"]


def test_early_stop_ends_the_run_when_the_score_stops_improving(sample_subject, tmp_path):
    run_dir = tmp_path / "run"
    # learning rate 0: nothing changes, so the score cannot improve after the first checkpoint
    result = trainers.train(_config("lora", learning_rate=0.0, early_stop_patience=1, steps=50), sample_subject, run_dir)
    assert result["steps"] == 20 and "Stopped early at step 20" in result["early_stop"]
    assert [e["type"] for e in flags(run_dir)] == ["early_stop"]
    assert read_events(run_dir)[-1]["type"] == "finished"
    assert result["best_checkpoint"]["step"] == 10


def test_no_validation_without_checkpoints_or_when_switched_off(sample_subject, tmp_path):
    trainers.train(tiny_config("lora", steps=4), sample_subject, tmp_path / "a")
    trainers.train(_config("lora", steps=10, validation=False), sample_subject, tmp_path / "b")
    for name in ("a", "b"):
        assert validation_records(tmp_path / name) == []
        assert "best_checkpoint" not in json.loads((tmp_path / name / "result.json").read_text())


def test_eval_defaults_to_the_best_checkpoint_and_pickers_list_the_choices(prior_run):
    from studio.evaluation import evaluate_run
    from studio.validation.history import checkpoint_choices

    run_dir, result = prior_run
    best = result["best_checkpoint"]
    options = {"clip": "tiny-clip", "dino": "tiny-dino", "max_prompts": 1, "images_per_prompt": 1, "class_images": 0,
               "steps": 2, "base": False}
    report = evaluate_run(run_dir, **options)
    assert report["checkpoint"] == {"choice": "best", "step": best["step"], "final": best["final"]}
    assert evaluate_run(run_dir, checkpoint=20, **options)["checkpoint"]["step"] == 20
    assert evaluate_run(run_dir, checkpoint="final", **options)["checkpoint"] == {"choice": "final", "step": 30,
                                                                                  "final": True}
    choices = checkpoint_choices(run_dir)
    assert choices[0][1] == "best" and choices[1] == ("final result", "final")
    assert ("checkpoint step 20", "20") in choices


def test_tensorboard_gets_the_losses_and_scores_or_a_plain_note_when_it_is_missing(sample_subject, tmp_path):
    from trainers.trackers import available

    run_dir = tmp_path / "run"
    trainers.train(_config("lora", steps=10, report_to="tensorboard"), sample_subject, run_dir)
    notes = [e for e in read_events(run_dir) if e["type"] == "note"]
    assert read_events(run_dir)[-1]["type"] == "finished"
    if available("tensorboard"):  # with the package: event files with the validation scalars
        files = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
        assert notes == [] and files and any(b"validation/dino" in f.read_bytes() for f in files)
    else:
        assert len(notes) == 1 and "pip install tensorboard" in notes[0]["message"]
        assert not (run_dir / "tensorboard").exists()
