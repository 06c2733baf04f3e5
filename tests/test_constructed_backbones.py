"""The built-in tiny-clip / tiny-dino are constructed: their embeddings are the documented image
statistics, and their cosine follows what images look like, on real photos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import SAMPLE_SUBJECT

import trainers
from studio.config import load_config
from studio.evaluation import load_clip, load_dino, score_images
from studio.evaluation.preprocessing import load_image
from studio.models.constructed_vision import (
    ENERGY_CENTRES,
    ENERGY_GAINS,
    ENERGY_WEIGHT,
    Layout,
    patch_filters,
)
from studio.subjects import prepare_subject
from studio.validation.history import validation_records


def _photo_sets() -> dict[str, tuple[str, list[Path]]]:
    """Real photos that an installed dependency ships: gradio's demo images (three cheetahs, a lion,
    the Eiffel Tower). Nothing is downloaded."""
    import gradio

    root = Path(gradio.__file__).parent
    sets = {
        "cheetah": ("cheetah", [root / "media_assets/images/cheetah.jpg", root / "media_assets/images/cheetah1.jpg",
                                root / "test_data/cheetah2.jpg"]),
        "lion": ("lion", [root / "media_assets/images/lion.jpg"]),
        "tower": ("tower", [root / "media_assets/images/tower.jpg"]),
    }
    missing = [str(p) for _, paths in sets.values() for p in paths if not p.is_file()]
    if missing:
        pytest.fail(f"gradio no longer ships these photos: {missing}; pick other real photos for this test")
    return sets


def _reference(pixels: torch.Tensor, patch: int, grid: int, act) -> torch.Tensor:
    """The documented statistics, written directly: region colour means, then centred edge/texture energies."""
    responses = F.conv2d(pixels, patch_filters(patch), stride=patch)
    side = responses.shape[-1]
    tokens = side * side + 1  # the CLS token takes part in the pooling with zero features
    region = torch.arange(side) * grid // side
    features = []
    for colour in range(3):
        for row in range(grid):
            for col in range(grid):
                inside = (region[:, None] == row) & (region[None, :] == col)
                features.append(grid * grid * (responses[:, colour] * inside).sum((1, 2)) / tokens)
    for index in range(3):
        x = responses[:, 3 + index] * ENERGY_GAINS[index]
        features.append(ENERGY_WEIGHT * ((act(x) + act(-x)).sum((1, 2)) / tokens - ENERGY_CENTRES[index]))
    return torch.stack(features, 1)


def test_the_constructed_networks_compute_the_documented_statistics(tiny_data_dir):
    images = [load_image(p) for p in sorted(SAMPLE_SUBJECT.iterdir()) if p.suffix in (".png", ".jpg")][:3]
    dino, clip = load_dino("tiny-dino", device="cpu"), load_clip("tiny-clip", device="cpu")
    pixels = dino.transform.batch(images)
    embedded = dino.embed_pixels(pixels)
    outputs = Layout(dino.model.config.hidden_size, 3).outputs
    assert embedded[:, [c for c in range(embedded.shape[1]) if c not in outputs]].abs().max() == 0
    assert F.cosine_similarity(embedded[:, outputs], _reference(pixels, 16, 3, F.gelu)).min() > 0.9999
    pixels = clip.transform.batch(images)
    quick_gelu = lambda x: x * torch.sigmoid(1.702 * x)  # noqa: E731
    embedded = clip.embed_pixels(pixels)
    assert F.cosine_similarity(embedded[:, :15], _reference(pixels, 32, 2, quick_gelu)).min() > 0.9999


def test_similarity_follows_appearance_on_real_photos(tiny_data_dir):
    sets = _photo_sets()
    dino = load_dino("tiny-dino", device="cpu")
    cheetahs = F.normalize(dino.embed_images([load_image(p) for p in sets["cheetah"][1]]), dim=1)
    tower = F.normalize(dino.embed_images([load_image(sets["tower"][1][0])]), dim=1)
    # a crop of a photo is closer to its photo than to a different photo
    whole = load_image(sets["tower"][1][0])
    crop = F.normalize(dino.embed_images([whole.crop((20, 40, whole.width - 20, whole.height - 40))]), dim=1)
    assert float(crop @ tower.T) > 0.9 > float((crop @ cheetahs.T).max())
    assert float(cheetahs[1] @ cheetahs[2]) > float((cheetahs[1:] @ tower.T).max())  # two cheetah faces


@pytest.mark.slow
def test_tiny_runs_score_above_the_base_and_closer_to_their_own_subject(tiny_data_dir, tmp_path):
    sets = {name: (noun, paths) for name, (noun, paths) in _photo_sets().items()}
    subjects, finals, trained = {}, {}, {}
    for name, (noun, paths) in sets.items():
        subjects[name] = prepare_subject(paths, "sks", noun, tmp_path / f"subject-{name}", resolution=64).directory
        # the tiny DreamBooth recipe; tiny-sd's images saturate at high guidance, so validate at 3
        config = load_config("tiny-dreambooth", {"sample_every": 0, "checkpoint_every": 0, "validation_every": 300,
                                                 "validation_budget": 100.0, "sample_guidance": 3.0,
                                                 "validation_clip": "tiny-clip", "validation_dino": "tiny-dino"})
        trainers.train(config, subjects[name], tmp_path / f"run-{name}")
        base, final = validation_records(tmp_path / f"run-{name}")
        trained[name] = {k: (round(base["scores"][k], 3), round(final["scores"][k], 3)) for k in ("dino", "clip_i")}
        finals[name] = [tmp_path / f"run-{name}" / p for p in final["images"] if not Path(p).name.startswith("class-")]
    print("base -> trained:", trained)
    for name, scores in trained.items():
        for metric, (before, after) in scores.items():
            assert after > before + 0.05, (name, metric, before, after)

    def dino_against(run: str, photos: str) -> float:
        refs = sorted((subjects[photos] / "images").iterdir())
        return score_images(finals[run], refs, clip="tiny-clip", dino="tiny-dino")["scores"]["dino"]

    # Own photos against the other real subjects'. Not asserted: cheetah against lion (both tawny big
    # cats: colour and texture statistics do not tell them apart; measured 0.19 vs 0.20).
    matrix = {run: {photos: round(dino_against(run, photos), 3) for photos in sets} for run in sets}
    print("DINO, run (rows) against photos (columns):", matrix)
    for run, other in [("tower", "cheetah"), ("tower", "lion"), ("lion", "tower"), ("lion", "cheetah"),
                       ("cheetah", "tower")]:
        assert matrix[run][run] > matrix[run][other], (run, other, matrix[run])
