"""Real subject data (issue 19): aspect-ratio buckets, captions, masks, Hugging Face datasets, several subjects.

Every test trains or prepares on tiny real models (tiny-sd at 64-128 px, tiny-blip, tiny-clipseg) and
checks what reaches the model: image shapes in the latent cache, prompts per step, loss weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from studio.buckets import assign_bucket, bucket_step, buckets
from studio.captions import place_identifier
from studio.cli import main
from studio.errors import ConfigError, SubjectError
from studio.subjects import load_subject, prepare_subject

FAST = {"steps": 3, "batch_size": 1, "log_every": 1, "validation": False}


def photo(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)


def photos(folder: Path, sizes: list[tuple[int, int]], first_seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for offset, size in enumerate(sizes):
        path = folder / f"p{offset}.png"
        photo(first_seed + offset, size).save(path)
        paths.append(path)
    return paths


def run_trainer(config, subject_dir: Path, run_dir: Path):
    """Train and hand back the trainer, to look at what it trained on."""
    from studio.rundir import prepare_run_dir
    from trainers import METHODS
    from trainers.base import Trainer

    prepare_run_dir(config, subject_dir, run_dir)
    trainer = Trainer(METHODS[config.method], config, run_dir)
    trainer.run()
    return trainer


# ------------------------------------------------------------------ buckets
def test_buckets_hold_the_area_and_fit_the_shape() -> None:
    for resolution in (128, 512, 1024):
        step = bucket_step(resolution)
        found = buckets(resolution)
        assert found[0] == (resolution, resolution)
        assert all(w * h <= resolution**2 and w % step == 0 and h % step == 0 for w, h in found)
        assert all(w * h >= 0.75 * resolution**2 for w, h in found[:5])  # the common shapes use most of the area
    assert assign_bucket((3000, 2000), 512) == (640, 384)
    assert assign_bucket((2000, 3000), 512) == (384, 640)
    assert assign_bucket((1000, 1000), 512) == (512, 512)
    assert (832, 1216) in buckets(1024)  # SDXL's portrait bucket


def test_non_square_photos_keep_their_shape_through_intake_caching_training_and_prior(tiny_data_dir, tmp_path: Path) -> None:
    files = photos(tmp_path / "in", [(150, 100), (100, 150), (120, 120)])
    subject = prepare_subject(files, "sks", "dog", tmp_path / "subject", resolution=128, crop="bucket")
    assert [Image.open(p).size for p in subject.image_paths] == [(160, 96), (96, 160), (128, 128)]
    config = tiny_config("lora", resolution=128, prior_preservation=True, num_class_images=3, class_image_steps=2,
                         **FAST | {"steps": 6})
    trainer = run_trainer(config, subject.directory, tmp_path / "run")
    latent_shapes = [tuple(trainer.latents.cached[0][i].shape[-2:]) for i in range(3)]
    assert latent_shapes == [(12, 20), (20, 12), (16, 16)]  # height x width / 8
    # one class image per bucket, generated at that bucket's size
    assert sorted(Image.open(p).size for p in trainer.class_paths) == [(96, 160), (128, 128), (160, 96)]
    for position in range(12):  # every batch holds one shape, the class row the same as its instance row
        step = trainer.plan.step(position)
        assert len({trainer.latents.shape_of(i) for i in step.indices}) == 1
    assert {trainer.latents.shape_of(trainer.plan.step(p).indices[0]) for p in range(12)} == {(96, 160), (160, 96), (128, 128)}
    square = tiny_config("lora", resolution=128, aspect_ratio_buckets=False, **FAST | {"steps": 1})
    cropped = run_trainer(square, subject.directory, tmp_path / "square")
    assert {tuple(cropped.latents.cached[0][i].shape[-2:]) for i in range(3)} == {(16, 16)}


# ------------------------------------------------------------------ captions
def test_captions_from_files_metadata_and_typed_with_the_identifier_placed(tmp_path: Path) -> None:
    files = photos(tmp_path / "in", [(96, 96)] * 4)
    (tmp_path / "in" / "p0.txt").write_text("a dog on the grass\n")
    (tmp_path / "in" / "metadata.jsonl").write_text(
        json.dumps({"file_name": "p1.png", "text": "{identifier} asleep"}) + "\n"
        + json.dumps({"file_name": "p2.png", "caption": "sunny beach"}) + "\n")
    subject = prepare_subject([tmp_path / "in"], "sks", "dog", tmp_path / "s", resolution=64,
                              captions={"p3.png": "a Dog in the snow"})
    assert subject.captions == ["a sks dog on the grass", "sks asleep", "a sks dog, sunny beach", "a sks Dog in the snow"]
    assert [s["caption_source"] for s in subject.sources] == ["file", "file", "file", "typed"]
    assert place_identifier("a dog", "sks", "dog", "prefix") == "a sks dog, a dog"
    assert place_identifier("a dog", "sks", "dog", "none") == "a dog"
    plain = prepare_subject(files, "sks", "dog", tmp_path / "plain", resolution=64, read_captions=False)
    assert plain.captions == [None] * 4 and plain.caption(0) == "a sks dog"


def test_a_bad_metadata_row_names_the_file_and_line_and_writes_nothing(tmp_path: Path) -> None:
    photos(tmp_path / "in", [(96, 96)] * 3)
    (tmp_path / "in" / "metadata.jsonl").write_text(json.dumps({"file_name": "p0.png", "text": "ok"}) + "\n{not json\n")
    with pytest.raises(SubjectError, match=r"metadata.jsonl: line 2 is not valid JSON"):
        prepare_subject([tmp_path / "in"], "sks", "dog", tmp_path / "out", resolution=64)
    assert not (tmp_path / "out").exists()


def test_caption_dropout_rate_holds_and_resumes_identically(tmp_path: Path) -> None:
    from trainers.batches import BatchPlan

    files = photos(tmp_path / "in", [(96, 96)] * 3)
    subject = prepare_subject(files, "sks", "dog", tmp_path / "s", resolution=64,
                              captions={f.name: f"a dog number {i}" for i, f in enumerate(files)})
    sizes = [(64, 64)] * 3
    for rate, target in ((0.3, "instance_prompt"), (0.1, "empty"), (0.0, "empty")):
        plan = BatchPlan(tiny_config("lora", caption_dropout=rate, caption_dropout_to=target, batch_size=2), subject, sizes,
                         prior=False)
        rows = [plan.prompts[r] for p in range(3000) for r in plan.step(p).prompt_rows]
        dropped_to = "" if target == "empty" else "a sks dog"
        share = rows.count(dropped_to) / len(rows)
        assert abs(share - rate) < 0.02, (rate, share)
        assert plan.step(1234).prompt_rows == BatchPlan(plan.config, subject, sizes, prior=False).step(1234).prompt_rows
    off = BatchPlan(tiny_config("lora", captions=False), subject, sizes, prior=False)
    assert off.prompts == ["a sks dog"]


# ------------------------------------------------------------------ masks
def _masked_subject(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    files = photos(folder, [(96, 96)] * 3)
    for index in range(len(files)):
        mask = np.zeros((96, 96), np.uint8)
        mask[24:72, 16 + 8 * index : 64 + 8 * index] = 255
        Image.fromarray(mask).save(folder / f"p{index}.mask.png")
    return prepare_subject([folder], "sks", "dog", tmp_path / "masked", resolution=64).directory


def test_mask_sources_alpha_file_painted_and_a_wrong_shape(tmp_path: Path) -> None:
    cutout = np.zeros((96, 96, 4), np.uint8)
    cutout[..., :3] = np.asarray(photo(5, (96, 96)))
    cutout[20:80, 30:70, 3] = 255
    (tmp_path / "a").mkdir()
    Image.fromarray(cutout, "RGBA").save(tmp_path / "a" / "cut.png")
    others = photos(tmp_path / "b", [(96, 96)] * 2, first_seed=7)
    painted = Image.new("L", (96, 96), 0)
    painted.paste(255, (0, 0, 48, 96))
    subject = prepare_subject([tmp_path / "a" / "cut.png", *others], "sks", "dog", tmp_path / "s", resolution=64,
                              masks={others[0].name: painted})
    assert [s["mask_source"] for s in subject.sources] == ["alpha", "painted", None]
    alpha = np.asarray(Image.open(subject.mask_paths[0]))
    assert alpha.shape == (64, 64) and alpha[10, 10] == 0 and alpha[32, 32] == 255
    Image.new("L", (50, 100), 255).save(tmp_path / "b" / "p1.mask.png")
    with pytest.raises(SubjectError, match=r"p1.mask.png: is 50x100 but its photo is 96x96"):
        prepare_subject(others, "sks", "dog", tmp_path / "bad", resolution=64)
    assert not (tmp_path / "bad").exists()


def test_masked_loss_background_weight_changes_what_trains(tiny_data_dir, tmp_path: Path) -> None:
    from trainers.objectives import diffusion_loss

    prediction, target = torch.zeros(2, 4, 8, 8), torch.ones(2, 4, 8, 8)
    target[:, :, :, 4:] = 3.0  # the background (right half) is far off
    weights = torch.zeros(2, 1, 8, 8)
    weights[..., :4] = 1.0
    assert diffusion_loss(prediction, target, weights=None, instance_count=2, prior_loss_weight=1,
                          pixel_weights=torch.ones(2, 1, 8, 8))[0] == diffusion_loss(
        prediction, target, weights=None, instance_count=2, prior_loss_weight=1)[0]
    assert diffusion_loss(prediction, target, weights=None, instance_count=2, prior_loss_weight=1,
                          pixel_weights=weights)[0].item() == pytest.approx(1.0)  # the subject's error alone

    subject = _masked_subject(tmp_path)
    assert all(p is not None for p in load_subject(subject).mask_paths)

    def lora(name: str, **settings):
        trainer = run_trainer(tiny_config("lora", **FAST, **settings), subject, tmp_path / name)
        return trainer.method.trainable_state()

    unmasked = lora("off", masked_loss=False)
    ignored = lora("one", mask_background_weight=1.0)
    subject_only = lora("zero", mask_background_weight=0.0)
    assert all(torch.equal(unmasked[k], ignored[k]) for k in unmasked)  # weight 1 everywhere: the same training
    change = max((unmasked[k] - subject_only[k]).abs().max().item() for k in unmasked)
    assert change > 1e-6, change


# ------------------------------------------------------------------ several subjects
def test_several_subjects_train_with_their_own_class_images_and_are_scored_separately(tiny_data_dir, tmp_path: Path) -> None:
    from studio.evaluation import evaluate_run
    from studio.subject_sets import combine_subjects

    dog = prepare_subject(photos(tmp_path / "dog", [(96, 96)] * 2), "sks", "dog", tmp_path / "s-dog", resolution=64)
    bag = prepare_subject(photos(tmp_path / "bag", [(96, 96)] * 2, first_seed=20), "xjy", "backpack", tmp_path / "s-bag",
                          resolution=64, captions={"p0.png": "a red backpack on a chair"})
    with pytest.raises(SubjectError, match="both use the identifier 'sks'"):
        combine_subjects([dog.directory, dog.directory], tmp_path / "twice")
    both = combine_subjects([dog.directory, bag.directory], tmp_path / "both", repeats=[1, 2])
    assert [(c.identifier, c.class_noun, c.repeats, c.images) for c in both.concepts] == [
        ("sks", "dog", 1, [0, 1]), ("xjy", "backpack", 2, [2, 3])]
    assert both.caption(2) == "a red xjy backpack on a chair" and both.caption(3) == "a xjy backpack"
    config = tiny_config("lora", prior_preservation=True, num_class_images=2, class_image_steps=2, **FAST)
    trainer = run_trainer(config, both.directory, tmp_path / "run")
    assert trainer.plan.class_prompts == ["a dog", "a backpack"]
    assert trainer.plan.items == [0, 1, 2, 2, 3, 3]  # repeats
    for position in range(8):  # each instance row is followed by a class image of its own subject
        step = trainer.plan.step(position)
        concept = trainer.plan.concept_of[step.indices[0]]
        assert trainer.plan.prompts[step.prompt_rows[1]] == ["a dog", "a backpack"][concept]
    report = evaluate_run(tmp_path / "run", clip="tiny-clip", dino="tiny-dino", images_per_prompt=1, max_prompts=1,
                          steps=2, base=False, class_images=0)
    assert [s["identifier"] for s in report["subjects"]] == ["sks", "xjy"]
    first, second = (s["scores"] for s in report["subjects"])
    assert first == report["scores"] and first["dino"] != second["dino"]
    assert (tmp_path / "run" / "eval" / report["subjects"][1]["images"][0]).is_file()


def test_textual_inversion_refuses_several_subjects(tiny_data_dir, tmp_path: Path) -> None:
    from studio.subject_sets import combine_subjects

    one = prepare_subject(photos(tmp_path / "a", [(96, 96)]), "sks", "dog", tmp_path / "sa", resolution=64)
    two = prepare_subject(photos(tmp_path / "b", [(96, 96)], first_seed=9), "xjy", "cat", tmp_path / "sb", resolution=64)
    both = combine_subjects([one.directory, two.directory], tmp_path / "both")
    with pytest.raises(ConfigError, match="Textual inversion learns one subject's token"):
        run_trainer(tiny_config("textual_inversion", **FAST), both.directory, tmp_path / "run")


# ------------------------------------------------------------------ datasets, automatic captions and masks
def test_dataset_round_trip_through_the_datasets_library(tiny_data_dir, tmp_path: Path, monkeypatch, capsys) -> None:
    import datasets

    subject = _masked_subject(tmp_path)
    assert main(["prepare", "--save-dataset", str(subject), "--out", str(tmp_path / "ds")]) == 0
    rows = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "ds"), split="train")
    assert rows.num_rows == 3 and rows[0]["text"] == "a sks dog" and rows[0]["mask"].size == (64, 64)
    code = main(["prepare", "--dataset", str(tmp_path / "ds"), "--identifier", "sks", "--class-noun", "dog",
                 "--out", str(tmp_path / "again"), "--resolution", "64", "--no-identifier-check"])
    assert code == 0
    again = load_subject(tmp_path / "again")
    assert again.captions == ["a sks dog"] * 3 and all(m is not None for m in again.mask_paths)
    assert np.array_equal(np.asarray(Image.open(again.image_paths[1])), np.asarray(Image.open(load_subject(subject).image_paths[1])))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["prepare", "--save-dataset", str(subject), "--out", str(tmp_path / "pushed"), "--push-to-hub", "me/toy"])
    assert code == 2 and "offline" in capsys.readouterr().err.lower()
    assert not (tmp_path / "pushed").exists()  # checked before any work
    code = main(["prepare", "--dataset", "no-such-user/no-such-dataset", "--identifier", "sks", "--class-noun", "dog",
                 "--out", str(tmp_path / "hub"), "--no-identifier-check"])
    assert code == 2 and "Cannot load the dataset no-such-user/no-such-dataset" in capsys.readouterr().err


def test_automatic_captions_and_masks_from_tiny_models(tiny_data_dir, tmp_path: Path) -> None:
    from studio.automask import load_masker
    from studio.captioner import load_captioner

    files = photos(tmp_path / "in", [(96, 96)] * 3)
    (tmp_path / "in" / "p0.txt").write_text("my own words about a dog")
    subject = prepare_subject([tmp_path / "in"], "sks", "dog", tmp_path / "s", resolution=64,
                              auto_caption=load_captioner("tiny-blip"), auto_mask=load_masker("tiny-clipseg"))
    assert subject.captions[0] == "my own words about a sks dog"  # a caption a person wrote is kept
    assert [s["caption_source"] for s in subject.sources] == ["file", "automatic", "automatic"]
    assert all(c and "sks" in c and len(c.split()) > 3 for c in subject.captions)
    assert all(Image.open(m).size == (64, 64) for m in subject.mask_paths)
    assert len(files) == 3
