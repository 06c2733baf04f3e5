"""The backbone transforms follow their definitions exactly (checked against direct PIL code)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from studio.evaluation.errors import EvaluationError
from studio.evaluation.preprocessing import clip_transform, dino_transform, load_image
from studio.paths import datasets_dir


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def by_hand(image: Image.Image, resized: tuple[int, int], box: tuple[int, int, int, int], mean, std) -> torch.Tensor:
    out = np.asarray(image.resize(resized, Image.Resampling.BICUBIC).crop(box), dtype=np.float64) / 255.0
    out = (out - np.array(mean)) / np.array(std)
    return torch.from_numpy(out).permute(2, 0, 1).float()


def test_dino_transform_is_resize_256_bicubic_crop_224_imagenet():
    transform = dino_transform()
    assert (transform.resize, transform.crop) == (256, 224)
    assert transform.mean == (0.485, 0.456, 0.406) and transform.std == (0.229, 0.224, 0.225)
    image = photo((333, 250))  # 256 * 333 / 250 = 340.99: torchvision truncates to 340
    expected = by_hand(image, (340, 256), (58, 16, 282, 240), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    out = transform(image)
    assert out.shape == (3, 224, 224)
    assert torch.allclose(out, expected, atol=1e-5)


def test_clip_transform_is_resize_224_bicubic_crop_224_clip_stats():
    transform = clip_transform()
    assert (transform.resize, transform.crop) == (224, 224)
    assert transform.mean == (0.48145466, 0.4578275, 0.40821073)
    assert transform.std == (0.26862954, 0.26130258, 0.27577711)
    tall = photo((200, 300), seed=1)
    expected = by_hand(tall, (224, 336), (0, 56, 224, 280), transform.mean, transform.std)
    assert torch.allclose(transform(tall), expected, atol=1e-5)
    assert transform.batch([tall, tall]).shape == (2, 3, 224, 224)
    assert dino_transform(112).resize == 128  # other input sizes keep DINO's 256/224 ratio


def test_images_are_oriented_and_transparency_becomes_white(tmp_path):
    shelf = load_image(datasets_dir() / "sample_subject" / "04_shelf_exif.jpg")
    assert shelf.size == (256, 320) and shelf.mode == "RGB"
    clear = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    clear.save(tmp_path / "clear.png")
    assert np.asarray(load_image(tmp_path / "clear.png")).min() == 255


def test_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(EvaluationError, match="broken.png"):
        load_image(bad)
