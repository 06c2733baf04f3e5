"""``evaluate_run``: the protocol on a run (fake pipelines for speed), and end to end on a trained run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

import studio.runs as runs
from studio.cli import main
from studio.errors import StudioError
from studio.evaluation import evaluate_run, validate_report
from studio.subjects import load_subject


class FakePipe:
    """Stands in for a diffusers pipeline: an image depends only on its prompt and its generator."""

    def __init__(self, fail: bool = False):
        self.calls: list[dict] = []
        self.fail = fail

    def set_progress_bar_config(self, **kwargs):
        pass

    def __call__(self, *, prompt, generator, height, width, **kwargs):
        if self.fail:
            raise RuntimeError("out of memory")
        self.calls.append(dict(kwargs, prompt=prompt, height=height, width=width))
        images = []
        for text, gen in zip(prompt, generator, strict=True):
            noise = torch.rand(4, 4, 3, generator=gen).numpy() * 200 + len(text) % 50
            images.append(Image.fromarray(noise.astype(np.uint8)).resize((width, height)))
        return SimpleNamespace(images=images)


@pytest.fixture
def fake_run(sample_subject, tmp_path, monkeypatch):
    directory = tmp_path / "run"
    directory.mkdir()
    result = {"method": "textual_inversion", "base": "tiny-sd", "artifact": "adapter", "token": "<sks>"}
    run = runs.Run(directory, tiny_config("textual_inversion"), load_subject(sample_subject), result)
    pipes = {"personalised": FakePipe(), "base": FakePipe()}
    monkeypatch.setattr(runs, "load_run", lambda path: run)
    monkeypatch.setattr(runs, "personalised_pipeline", lambda r: pipes["personalised"])
    monkeypatch.setattr(runs, "base_pipeline", lambda r: pipes["base"])
    return run, pipes


def test_protocol_writes_images_report_and_contact_sheet(fake_run, tiny_data_dir):
    run, pipes = fake_run
    report = evaluate_run(run.directory, prompts="dreambench", max_prompts=2, images_per_prompt=2, class_images=3,
                          seed=5, steps=3, guidance=4.0, clip="tiny-clip", dino="tiny-dino")
    eval_dir = run.directory / "eval"
    assert json.loads((eval_dir / "report.json").read_text()) == json.loads(json.dumps(report))
    assert validate_report(report) == []
    assert report["counts"] == {"personalised": 4, "base": 4, "class": 3, "references": 4, "prompts": 2}
    assert report["seeds"] == [5, 6] and report["settings"]["prompts"] == "dreambench-objects"
    assert report["subject"]["token"] == "<sks>" and report["method"] == "textual_inversion"
    roles = {role: [i for i in report["images"] if i["role"] == role] for role in ("personalised", "base", "class")}
    assert [i["prompt"] for i in roles["personalised"]][:2] == ["a <sks> toy in the jungle"] * 2
    assert [i["prompt"] for i in roles["base"]][:2] == ["a toy in the jungle"] * 2
    assert {i["prompt"] for i in roles["class"]} == {"a toy"} and [i["seed"] for i in roles["class"]] == [5, 6, 7]
    assert all((eval_dir / i["path"]).is_file() for i in report["images"])
    assert (eval_dir / "contact_sheet.png").is_file()
    assert report["per_prompt"][0]["text"] == "a toy in the jungle" and report["per_prompt"][0]["base_scores"]
    assert all(isinstance(report["base_scores"][k], float) for k in ("clip_i", "clip_t", "dino", "div"))
    call = pipes["personalised"].calls[0]
    assert (call["height"], call["num_inference_steps"], call["guidance_scale"]) == (64, 3, 4.0)
    assert not [p for p in run.directory.iterdir() if p.name.startswith(".")]


def test_failed_evaluation_leaves_nothing_that_looks_finished(fake_run, tiny_data_dir, monkeypatch):
    run, _ = fake_run
    monkeypatch.setattr(runs, "base_pipeline", lambda r: FakePipe(fail=True))
    with pytest.raises(RuntimeError, match="out of memory"):
        evaluate_run(run.directory, prompts=["a {0} {1}"], images_per_prompt=1, class_images=0,
                     clip="tiny-clip", dino="tiny-dino")
    assert list(run.directory.iterdir()) == []


def test_unfinished_run_names_the_fix(fake_run):
    run, _ = fake_run
    run.result = None
    with pytest.raises(StudioError, match="resume"):
        evaluate_run(run.directory, clip="tiny-clip", dino="tiny-dino")


@pytest.mark.slow
def test_evaluate_a_trained_lora_run_from_the_cli(sample_subject, tmp_path):
    trainers = pytest.importorskip("trainers")
    run_dir = tmp_path / "run"
    trainers.train(tiny_config("lora", steps=4), sample_subject, run_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a {0} {1} on the beach\na red {0} {1}\n")
    argv = ["eval", str(run_dir), "--prompts", str(prompts), "--images-per-prompt", "2", "--class-images", "2",
            "--steps", "4", "--clip", "tiny-clip", "--dino", "tiny-dino"]
    assert main(argv) == 0
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert validate_report(report) == [] and report["method"] == "lora"
    assert report["counts"]["personalised"] == 4 and report["counts"]["base"] == 4
    assert report["per_prompt"][1]["prompt"] == "a red sks toy"
    for image in report["images"]:
        assert Image.open(Path(run_dir / "eval" / image["path"])).size == (64, 64)
    assert (run_dir / "eval" / "contact_sheet.png").is_file()
