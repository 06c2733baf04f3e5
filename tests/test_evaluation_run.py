"""``evaluate_run``: the protocol on a trained tiny run, failure handling, and the CLI end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

import studio.runs as runs
from studio.cli import main
from studio.errors import StudioError
from studio.evaluation import evaluate_run, validate_report


@pytest.fixture
def ti_run(tiny_ti_run, tmp_path):
    """A private copy of the session's trained textual-inversion run (evaluation writes into it)."""
    directory = tmp_path / "run"
    shutil.copytree(tiny_ti_run, directory)
    return runs.load_run(directory)


def test_protocol_writes_images_report_and_contact_sheet(ti_run, tiny_data_dir):
    before = sorted(p.name for p in ti_run.directory.iterdir())
    report = evaluate_run(ti_run.directory, prompts="dreambench", max_prompts=2, images_per_prompt=2, class_images=3,
                          seed=5, steps=3, guidance=4.0, clip="tiny-clip", dino="tiny-dino")
    eval_dir = ti_run.directory / "eval"
    assert json.loads((eval_dir / "report.json").read_text()) == json.loads(json.dumps(report))
    assert validate_report(report) == []
    assert report["counts"] == {"personalised": 4, "base": 4, "class": 3, "references": 4, "prompts": 2}
    assert report["seeds"] == [5, 6] and report["settings"]["prompts"] == "dreambench-objects"
    token = ti_run.result["token"]
    assert report["subject"]["token"] == token and report["method"] == "textual_inversion"
    roles = {role: [i for i in report["images"] if i["role"] == role] for role in ("personalised", "base", "class")}
    assert [i["prompt"] for i in roles["personalised"]][:2] == [f"a {token} toy in the jungle"] * 2
    assert [i["prompt"] for i in roles["base"]][:2] == ["a toy in the jungle"] * 2
    assert {i["prompt"] for i in roles["class"]} == {"a toy"} and [i["seed"] for i in roles["class"]] == [5, 6, 7]
    assert all((eval_dir / i["path"]).is_file() for i in report["images"])
    with Image.open(eval_dir / roles["personalised"][0]["path"]) as image:
        assert image.size == (64, 64)  # the run's resolution
    assert (eval_dir / "contact_sheet.png").is_file()
    assert report["per_prompt"][0]["text"] == "a toy in the jungle" and report["per_prompt"][0]["base_scores"]
    assert all(isinstance(report["base_scores"][k], float) for k in ("clip_i", "clip_t", "dino", "div"))
    # the learned token changes what the same prompt and seed render
    personalised = np.asarray(Image.open(eval_dir / roles["personalised"][0]["path"]), dtype=float)
    base = np.asarray(Image.open(eval_dir / roles["base"][0]["path"]), dtype=float)
    assert np.abs(personalised - base).mean() > 1.0
    assert sorted(p.name for p in ti_run.directory.iterdir()) == sorted(before + ["eval"])  # no temporary left


def test_failed_evaluation_leaves_nothing_that_looks_finished(ti_run, tiny_data_dir, monkeypatch):
    before = sorted(p.name for p in ti_run.directory.iterdir())

    def out_of_memory(run):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(runs, "base_pipeline", out_of_memory)  # a failure half-way: the base loads after the run's own
    with pytest.raises(RuntimeError, match="out of memory"):
        evaluate_run(ti_run.directory, prompts=["a {0} {1}"], images_per_prompt=1, class_images=0,
                     clip="tiny-clip", dino="tiny-dino")
    assert sorted(p.name for p in ti_run.directory.iterdir()) == before


def test_unfinished_run_names_the_fix(ti_run):
    (ti_run.directory / "result.json").unlink()
    with pytest.raises(StudioError, match="resume"):
        evaluate_run(ti_run.directory, clip="tiny-clip", dino="tiny-dino")


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
        assert Image.open(run_dir / "eval" / image["path"]).size == (64, 64)
    assert (run_dir / "eval" / "contact_sheet.png").is_file()
