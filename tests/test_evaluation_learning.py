"""End to end: training with the tiny DreamBooth recipe brings the subject back, as the metrics see it."""

from __future__ import annotations

import pytest

import trainers
from studio.config import load_config
from studio.evaluation import evaluate_run, validate_report


@pytest.mark.slow
def test_tiny_dreambooth_scores_above_the_untrained_base(sample_subject, tmp_path):
    run_dir = tmp_path / "run"
    config = load_config("tiny-dreambooth", {"sample_every": 0, "checkpoint_every": 0})
    trainers.train(config, sample_subject, run_dir)
    report = evaluate_run(run_dir, clip="tiny-clip", dino="tiny-dino", max_prompts=4, images_per_prompt=2,
                          class_images=2, steps=12, guidance=5.0)
    assert validate_report(report) == []
    scores, base = report["scores"], report["base_scores"]
    assert set(scores) >= {"clip_i", "clip_t", "dino", "pres", "div"}
    assert scores["dino"] > base["dino"], (scores, base)
    assert scores["clip_i"] > base["clip_i"], (scores, base)
