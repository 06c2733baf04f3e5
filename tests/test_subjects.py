"""Subject intake: photos that must be accepted, converted, rejected, and written atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from studio.cli import main
from studio.errors import SubjectError
from studio.images import decode_image, fit_square, to_rgb
from studio.paths import datasets_dir
from studio.subjects import SCHEMA_VERSION, load_subject, prepare_subject, validate_images

RES = 64


def photo(seed: int, size: tuple[int, int] = (96, 96)) -> Image.Image:
    """A smooth random 'photo': distinct seeds give distinct perceptual hashes."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return coarse.resize(size, Image.Resampling.BICUBIC)


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


@pytest.fixture
def good(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "good"
    folder.mkdir()
    return [save(photo(seed), folder / f"good{seed}.png") for seed in range(3)]


def only_error(validation, path: Path) -> str:
    errors = validation.errors
    assert len(errors) == 1, [str(e) for e in validation.messages]
    assert errors[0].path == path
    assert path.name in str(errors[0])
    return errors[0].text


def _corrupt_png(path: Path) -> None:
    data = bytearray((path.parent / "src.png").read_bytes())
    start = data.index(b"IDAT") + 8
    data[start : start + 40] = bytes(range(40))
    path.write_bytes(bytes(data))


def _truncated_jpeg(path: Path) -> None:
    save(photo(7, (200, 200)), path.parent / "src.jpg", quality=95)
    data = (path.parent / "src.jpg").read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])


BAD_CASES = {
    "random.png": (lambda p: p.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8))), "not an image"),
    "notes.jpg": (lambda p: p.write_text("these are my notes, not a photo\n"), "not an image"),
    "empty.png": (lambda p: p.write_bytes(b""), "empty"),
    "corrupt.png": (_corrupt_png, "corrupt"),
    "truncated.jpg": (_truncated_jpeg, "truncated"),
    "tiny.png": (lambda p: save(photo(8, (30, 40)), p), "too small"),
    "anim.gif": (lambda p: save(photo(9), p), "GIF"),
}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_file_is_rejected_with_its_name(tmp_path: Path, good: list[Path], name: str) -> None:
    make, reason = BAD_CASES[name]
    save(photo(11), tmp_path / "src.png")
    bad = tmp_path / name
    make(bad)
    validation = validate_images([*good, bad], RES)
    assert reason in only_error(validation, bad)
    assert [a.path for a in validation.accepted] == good


def test_duplicates_are_rejected(tmp_path: Path, good: list[Path]) -> None:
    exact = tmp_path / "copy.png"
    shutil.copy(good[0], exact)
    original = photo(1, (96, 96))
    near = save(ImageEnhance.Brightness(original).enhance(1.08).resize((88, 88)), tmp_path / "near.jpg", quality=92)
    validation = validate_images([*good, exact, near], RES)
    texts = {m.path: m.text for m in validation.errors}
    assert set(texts) == {exact, near}
    assert "exact copy" in texts[exact] and good[0].name in texts[exact]
    assert "nearly identical" in texts[near] and good[1].name in texts[near]


def test_decompression_bombs(tmp_path: Path, good: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    big = save(photo(5, (200, 150)), tmp_path / "big.png")
    assert "safety limit" in only_error(validate_images([*good, big], RES, max_pixels=20_000), big)
    for limit in (20_000, 12_000):  # Pillow warns above its limit and refuses above twice it
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        assert "decompression bomb" in only_error(validate_images([*good, big], RES), big)


def test_image_counts(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "No images" in str(validate_images([empty], RES).errors[0])
    many = tmp_path / "many"
    many.mkdir()
    for seed in range(21):
        save(photo(seed, (40, 40)), many / f"{seed:02d}.png")
    errors = validate_images([many], RES).errors
    assert len(errors) == 1 and "21 images" in str(errors[0])
    few = validate_images(sorted(many.iterdir())[:2], RES)
    assert few.ok and any("3-5" in str(w) for w in few.warnings)


def test_directory_expansion(tmp_path: Path, good: list[Path]) -> None:
    folder = good[0].parent
    (folder / ".hidden.png").write_bytes(b"junk")
    (folder / "caption.txt").write_text("a dog")
    (folder / "sub").mkdir()
    missing = tmp_path / "missing.jpg"
    validation = validate_images([folder, good[0], missing], RES)
    assert [a.path for a in validation.accepted] == sorted(good)
    text = "\n".join(str(m) for m in validation.messages)
    assert "caption.txt: was skipped" in text and "sub: is a subfolder" in text and ".hidden" not in text
    assert "more than once" in text
    assert only_error(validation, missing) == "does not exist"


def _single(tmp_path: Path, img: Image.Image, name: str, crop: str = "center", **kwargs) -> np.ndarray:
    path = save(img, tmp_path / name, **kwargs)
    validation = validate_images([path], img.size[0] if crop == "center" else max(img.size), crop)
    assert validation.ok, [str(m) for m in validation.messages]
    return np.asarray(validation.accepted[0].image)


def test_colour_conversions(tmp_path: Path) -> None:
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, 32:] = (200, 10, 10, 255)
    out = _single(tmp_path, Image.fromarray(rgba, "RGBA"), "alpha.png")
    assert tuple(out[5, 5]) == (255, 255, 255) and tuple(out[5, 60]) == (200, 10, 10)
    pal = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert tuple(_single(tmp_path, pal, "pal.png")[5, 60]) == (200, 10, 10)
    pal.info["transparency"] = pal.getpixel((5, 5))
    assert tuple(_single(tmp_path, pal, "paltrans.png")[5, 5]) == (255, 255, 255)
    grey = _single(tmp_path, Image.new("L", (64, 64), 77), "grey.png")
    assert grey.shape == (64, 64, 3) and tuple(grey[0, 0]) == (77, 77, 77)
    cmyk = _single(tmp_path, Image.new("CMYK", (64, 64), (255, 0, 0, 0)), "cmyk.jpg", quality=95)
    assert np.abs(cmyk[32, 32].astype(int) - (0, 255, 255)).max() <= 3
    webp = _single(tmp_path, Image.new("RGB", (64, 64), (10, 120, 240)), "pic.webp", lossless=True)
    assert tuple(webp[0, 0]) == (10, 120, 240)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.full((64, 64), 32896, np.uint16)  # 128 * 257
    values[:, 32:] = 65535
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    out = _single(tmp_path, img, "deep.png")
    assert tuple(out[0, 0]) == (128, 128, 128) and tuple(out[0, 63]) == (255, 255, 255)
    assert to_rgb(Image.fromarray(values.astype(np.int32))).getpixel((63, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    upright = np.zeros((80, 64, 3), np.uint8)  # portrait: red top, blue bottom
    upright[:40] = (255, 0, 0)
    upright[40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # viewer rotates 90 degrees clockwise
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    path = save(stored, tmp_path / "rotated.jpg", quality=95, exif=exif.tobytes())
    assert decode_image(path).size == (64, 80)
    out = np.asarray(validate_images([path], 64).accepted[0].image).astype(int)
    assert out[2, 32, 0] > 200 and out[2, 32, 2] < 60
    assert out[61, 32, 2] > 200 and out[61, 32, 0] < 60


def test_center_crop_and_pad(tmp_path: Path) -> None:
    wide = np.zeros((100, 200, 3), np.uint8)
    wide[:, :100] = (255, 0, 0)
    wide[:, 100:] = (0, 0, 255)
    img = Image.fromarray(wide)
    center = np.asarray(fit_square(img, 64, "center")).astype(int)
    pad = np.asarray(fit_square(img, 64, "pad")).astype(int)
    assert center.shape == pad.shape == (64, 64, 3)
    assert center[0, 2, 0] > 200 and center[0, 61, 2] > 200  # red and blue reach the top row
    assert (pad[:14] == 255).all() and (pad[-14:] == 255).all()  # white bars above and below
    assert pad[32, 2, 0] > 200 and pad[32, 61, 2] > 200


def test_large_jpeg_is_decoded_reduced_but_still_checked(tmp_path: Path) -> None:
    path = save(photo(3, (1600, 1200)), tmp_path / "large.jpg", quality=90)
    decoded = decode_image(path, min_side=256)
    assert decoded.size == (1600, 1200) and decoded.image.size == (400, 300)
    truncated = tmp_path / "large_truncated.jpg"
    truncated.write_bytes(path.read_bytes()[:-4000])
    validation = validate_images([truncated], 256)
    assert "truncated" in only_error(validation, truncated)


def test_prepare_writes_subject(tmp_path: Path, good: list[Path]) -> None:
    out = tmp_path / "subjects" / "rex"
    subject = prepare_subject(good, "sks", " teddy  bear ", out, resolution=RES, crop="pad")
    record = json.loads((out / "subject.json").read_text())
    assert record["schema_version"] == SCHEMA_VERSION
    assert (record["instance_prompt"], record["class_prompt"]) == ("a sks teddy bear", "a teddy bear")
    assert record["images"] == ["images/00.png", "images/01.png", "images/02.png"]
    assert [s["name"] for s in record["sources"]] == [p.name for p in good]
    assert record["sources"][0]["size"] == [96, 96] and len(record["sources"][0]["sha256"]) == 64
    assert subject == load_subject(out)
    assert all(p.is_absolute() and Image.open(p).size == (RES, RES) for p in subject.image_paths)
    assert (subject.resolution, subject.crop) == (RES, "pad")


def test_sample_subject(tmp_path: Path) -> None:
    folder = datasets_dir() / "sample_subject"
    subject = prepare_subject([folder], "sks", "rubber duck", tmp_path / "duck", resolution=RES)
    assert len(subject.image_paths) == 4
    assert [s["size"] for s in subject.sources][-1] == [256, 320]  # the EXIF-rotated portrait
    assert any("README.md" in w for w in subject.warnings)


def test_nothing_left_behind_on_failure(tmp_path: Path, good: list[Path]) -> None:
    bad = good[0].parent / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    parent = tmp_path / "subjects"
    parent.mkdir()
    with pytest.raises(SubjectError, match="broken.png"):
        prepare_subject([*good, bad], "sks", "dog", parent / "rex", resolution=RES)
    assert list(parent.iterdir()) == []


def test_existing_output(tmp_path: Path, good: list[Path]) -> None:
    out = tmp_path / "rex"
    prepare_subject(good, "sks", "dog", out, resolution=RES)
    with pytest.raises(SubjectError, match="--force"):
        prepare_subject(good[:2], "sks", "dog", out, resolution=RES)
    assert len(prepare_subject(good[:2], "sks", "cat", out, resolution=RES, force=True).image_paths) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good", "rex"]
    other = tmp_path / "docs"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(SubjectError, match="not a subject folder"):
        prepare_subject(good, "sks", "dog", other, resolution=RES, force=True)
    (tmp_path / "empty").mkdir()
    prepare_subject(good, "sks", "dog", tmp_path / "empty", resolution=RES)


@pytest.mark.parametrize(
    ("identifier", "noun", "match"),
    [("", "dog", "empty"), ("sks", "  ", "empty"), ("sks\nzwx", "dog", "spaces|lines"), ("sks", "dog\ncat", "lines"),
     ("sks dog", "dog", "spaces")],
)
def test_text_fields(tmp_path: Path, good: list[Path], identifier: str, noun: str, match: str) -> None:
    with pytest.raises(SubjectError, match=match):
        prepare_subject(good, identifier, noun, tmp_path / "out", resolution=RES)


def test_load_subject_errors(tmp_path: Path, good: list[Path]) -> None:
    with pytest.raises(SubjectError, match="studio prepare"):
        load_subject(tmp_path)
    out = tmp_path / "rex"
    prepare_subject(good, "sks", "dog", out, resolution=RES)
    (out / "images" / "01.png").unlink()
    with pytest.raises(SubjectError, match="01.png"):
        load_subject(out)


def test_cli(tmp_path: Path, good: list[Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("studio.cli.COMMAND_MODULES", ["studio.cli.prepare_cmd"])  # this command only
    out = tmp_path / "rex"
    args = ["prepare", "--identifier", "sks", "--class-noun", "dog", "--resolution", str(RES), "--no-identifier-check"]
    assert main([*args, "--images", str(good[0].parent), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "good0.png" in printed and str(out) in printed and "a sks dog" in printed
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    assert main([*args, "--images", *map(str, good), str(bad), "--out", str(tmp_path / "other")]) == 2
    captured = capsys.readouterr()
    assert "rejected" in captured.err and "notes.jpg" in captured.err and not (tmp_path / "other").exists()
    assert main(["prepare", "--identifier", "sks"]) == 2
    assert "--images" in capsys.readouterr().err
