"""Tiny backbones, the reference-embedding cache, ``score_images`` and ``studio eval --images``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from studio.cli import main
from studio.errors import ModelLoadError, StudioError
from studio.evaluation import embed_cache, load_clip, load_dino, score_images, validate_report
from studio.evaluation.contact_sheet import SheetRow, render_contact_sheet
from studio.evaluation.embed_cache import reference_embeddings
from studio.evaluation.embedding import Embedder
from studio.evaluation.errors import EvaluationError
from studio.models import materialize

SAMPLE = Path(__file__).resolve().parent.parent / "datasets" / "sample_subject"


@pytest.fixture(scope="module")
def backbones(tiny_data_dir):
    return load_clip("tiny-clip"), load_dino("tiny-dino")


def picture(seed: int, size=(80, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)


@pytest.fixture
def folders(tmp_path):
    generated, refs = tmp_path / "generated", tmp_path / "refs"
    generated.mkdir()
    refs.mkdir()
    for i in range(4):
        picture(i).save(generated / f"{i:02d}.png")
    for i in range(2):
        picture(10 + i).save(refs / f"ref{i}.png")
    prompts = {"00.png": "a sks toy on the beach", "01.png": "a sks toy on the beach",
               "02.png": "a red sks toy", "03.png": "a red sks toy"}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    return generated, refs, tmp_path / "prompts.json"


def test_tiny_backbones_materialise_and_reload_with_from_pretrained(backbones, tmp_path):
    from transformers import CLIPModel, CLIPProcessor, ViTModel

    clip, dino = backbones
    materialize("tiny-clip", tmp_path / "clip")
    materialize("tiny-dino", tmp_path / "dino")
    processor = CLIPProcessor.from_pretrained(str(tmp_path / "clip"))
    assert processor.tokenizer("a dog").input_ids[0] == 49406
    assert isinstance(CLIPModel.from_pretrained(str(tmp_path / "clip")), CLIPModel)
    assert ViTModel.from_pretrained(str(tmp_path / "dino"), add_pooling_layer=False).config.patch_size == 16
    images = [picture(1), picture(2)]
    again_clip, again_dino = load_clip(str(tmp_path / "clip")), load_dino(str(tmp_path / "dino"))
    assert torch.equal(clip.embed_images(images), again_clip.embed_images(images))  # deterministic build
    assert torch.equal(dino.embed_images(images), again_dino.embed_images(images))
    assert again_clip.source == "folder" and clip.fingerprint == "builtin:tiny-clip-v2"
    assert clip.embed_texts(["a dog", "a dog on the beach"]).shape == (2, clip.model.config.projection_dim)


def test_missing_or_wrong_backbones_name_the_fix(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="tiny-clip") as error:
        load_clip("nobody/no-such-clip")
    assert "offline" in str(error.value)
    with pytest.raises(ModelLoadError, match="tiny-dino"):
        load_dino(str(tmp_path / "missing-folder"))
    with pytest.raises(ModelLoadError, match="not a DINO backbone"):
        load_dino("tiny-clip")


def test_identical_image_sets_score_one(backbones, tmp_path):
    clip, dino = backbones
    picture(5).save(tmp_path / "only.png")
    report = score_images(tmp_path / "only.png", tmp_path / "only.png", clip=clip, dino=dino)
    assert report["scores"]["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert report["scores"]["dino"] == pytest.approx(1.0, abs=1e-5)


def test_score_images_with_prompts_and_class_images(backbones, folders, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "data"))
    generated, refs, prompts = folders
    clip, dino = backbones
    report = score_images(generated, refs, prompts=prompts, class_images=generated / "00.png",
                          identifier="sks", clip=clip, dino=dino)
    assert validate_report(report) == []
    scores = report["scores"]
    assert all(isinstance(scores[k], float) for k in ("clip_i", "clip_t", "dino", "pres", "div"))
    assert [p["text"] for p in report["per_prompt"]] == ["a toy on the beach", "a red toy"]
    assert report["counts"] == {"images": 4, "references": 2, "class": 1}
    assert report["backbones"]["dino"]["preprocessing"]["resize"] == 256


def test_reference_embeddings_are_cached_by_backbone_and_content(backbones, folders, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "data"))
    _, refs, _ = folders
    embedder = Embedder(*backbones)
    paths = sorted(refs.iterdir())
    first = reference_embeddings(embedder, paths)
    assert len(list((tmp_path / "data" / "embeddings").iterdir())) == 2

    def no_decoding(path):
        raise AssertionError("a cached reference was decoded again")

    monkeypatch.setattr(embed_cache, "load_image", no_decoding)
    second = reference_embeddings(embedder, paths)
    assert torch.equal(first.clip, second.clip) and torch.equal(first.dino, second.dino)
    picture(99).save(paths[0])  # new content, new key
    with pytest.raises(AssertionError, match="decoded again"):
        reference_embeddings(embedder, paths)


def test_cli_scores_folders(tiny_data_dir, folders, tmp_path, capsys):
    generated, refs, prompts = folders
    out = tmp_path / "report.json"
    argv = ["eval", "--images", str(generated), "--references", str(refs), "--clip", "tiny-clip", "--dino", "tiny-dino"]
    assert main([*argv, "--prompts", str(prompts), "--identifier", "sks", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert validate_report(report) == [] and report["kind"] == "images"
    assert report["scores"]["clip_t"] is not None and len(report["per_prompt"]) == 2
    assert "CLIP-I" in capsys.readouterr().out
    assert main(argv) == 0
    assert "CLIP-T omitted" in capsys.readouterr().out


def test_bad_inputs_are_reported(tiny_data_dir, folders, tmp_path, capsys):
    generated, refs, prompts = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvaluationError, match="No images to score found"):
        score_images(empty, refs, clip="tiny-clip", dino="tiny-dino")
    broken = tmp_path / "broken"
    shutil.copytree(generated, broken)
    (broken / "01.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(EvaluationError, match="01.png"):
        score_images(broken, refs, clip="tiny-clip", dino="tiny-dino")
    (tmp_path / "partial.json").write_text(json.dumps({"00.png": "a toy"}))
    with pytest.raises(EvaluationError, match="no prompt for 01.png"):
        score_images(generated, refs, prompts=tmp_path / "partial.json", clip="tiny-clip", dino="tiny-dino")
    rc = main(["eval", "--images", str(generated), "--references", str(refs), "--clip", "nobody/missing-clip"])
    assert rc == 2 and "tiny-clip" in capsys.readouterr().err
    with pytest.raises(StudioError, match="reference images: .*nope: does not exist"):
        score_images(generated, tmp_path / "nope", clip="tiny-clip", dino="tiny-dino")


def test_contact_sheet_layout():
    rows = [SheetRow("references", [picture(1), picture(2)], ["a", "b"]), SheetRow("prompt", [picture(3)] * 4)]
    sheet = render_contact_sheet(rows, thumb=32)
    assert sheet.mode == "RGB" and sheet.width >= 4 * 32 and sheet.height >= 2 * 32
