"""Identifier checks against the real CLIP vocabulary (built offline, no model needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.identifiers import check_identifier, rare_id_range, suggest_identifiers
from studio.models.tokenizer import write_clip_tokenizer
from studio.subjects import prepare_subject


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import CLIPTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    write_clip_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(str(folder))


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "studio-data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_sks_is_one_rare_token(tokenizer) -> None:
    check = check_identifier(tokenizer, "sks")
    assert check.tokens == ["sks</w>"] and check.is_single_token and check.is_rare and check.ok
    assert check.token_ids[0] in rare_id_range(tokenizer)
    assert check.suggestions == [] and "good identifier" in check.message


def test_common_word_is_single_but_not_rare(tokenizer) -> None:
    check = check_identifier(tokenizer, "dog")
    assert check.is_single_token and not check.is_rare
    assert "common" in check.message and len(check.suggestions) == 5


def test_multi_token_word_gets_single_token_suggestions(tokenizer) -> None:
    check = check_identifier(tokenizer, "xyzzyq")
    assert len(check.tokens) > 1 and not check.is_single_token and not check.is_rare
    assert "split into" in check.message
    assert len(check.suggestions) == 5
    for suggestion in check.suggestions:
        assert suggestion in check.message
        again = check_identifier(tokenizer, suggestion)
        assert again.is_single_token and again.is_rare, suggestion


def test_suggestions_are_deterministic(tokenizer) -> None:
    first = suggest_identifiers(tokenizer, n=8, seed=0)
    assert first == suggest_identifiers(tokenizer, n=8, seed=0)
    assert first != suggest_identifiers(tokenizer, n=8, seed=1)
    assert len(set(first)) == 8 and all(2 <= len(s) <= 3 and s.isalpha() for s in first)
    assert "sks" not in suggest_identifiers(tokenizer, n=300, exclude=("sks",))


def _photos(folder: Path) -> list[Path]:
    folder.mkdir()
    paths = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        img = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((64, 64), Image.Resampling.BICUBIC)
        img.save(folder / f"{seed}.png")
        paths.append(folder / f"{seed}.png")
    return paths


def test_prepare_warns_about_a_poor_identifier(tokenizer, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos")
    subject = prepare_subject(photos, "dog", "dog", tmp_path / "a", resolution=64, tokenizer=tokenizer)
    assert any("'dog' is a single token but a common one" in w for w in subject.warnings)
    subject = prepare_subject(photos, "sks", "dog", tmp_path / "b", resolution=64, tokenizer=[tokenizer, tokenizer])
    assert not any("token" in w for w in subject.warnings)


def test_cli_checks_identifier_with_base_folder(tokenizer, tmp_path: Path, capsys, monkeypatch) -> None:
    from studio.cli import main

    monkeypatch.setattr("studio.cli.COMMAND_MODULES", ["studio.cli.prepare_cmd"])
    base = tmp_path / "base"
    tokenizer.save_pretrained(str(base / "tokenizer"))
    photos = _photos(tmp_path / "photos")
    argv = ["prepare", "--images", *map(str, photos), "--identifier", "qwertyuiop", "--class-noun", "dog",
            "--out", str(tmp_path / "out"), "--resolution", "64", "--base", str(base)]
    assert main(argv) == 0
    assert "split into" in capsys.readouterr().out
    assert main(["prepare", "--suggest-identifiers", "--base", str(base)]) == 0
    assert "Rare single-token identifiers:" in capsys.readouterr().out
