"""Inpainting, ControlNet and instruction edits with the personalised model; recipes that make an image again.

What is proven, on the built-in tiny models (64 px, 3 steps):
- inpainting on a plain base (mask blending): more than one latent cell (8 px) away from the mask the raw
  output is the VAE's reconstruction of the start image, so it differs from the start image by the VAE's
  own error and no more; with keep_outside (the default) it does not differ at all; the subject's LoRA
  changes what is painted inside. An inpainting base carries the LoRA too;
- ControlNet: the control image changes the output, another control image changes it differently, and
  control strength 0 gives the plain generation's pixels; SD1.x and SDXL;
- instruction edits on an instruction-tuned base, with a LoRA and with an embedding of the subject;
- the recipe recorded in each PNG regenerates the same pixels (and refuses changed inputs).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from studio.cli import main
from studio.control import ControlSpec, canny_edges
from studio.errors import StudioError
from studio.generate import AdapterRef, GenerationRequest, Generator
from studio.inpaint import outside_difference
from studio.recipe import read_recipe


def edit_request(**overrides) -> GenerationRequest:
    values = dict(prompt="a photo of sks toy", steps=3, seed=7, height=64, width=64)
    return GenerationRequest(**(values | overrides))


def grey_levels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(grey_levels(a) - grey_levels(b)).mean())


@pytest.fixture(scope="module")
def generator(tiny_data_dir):
    return Generator(device="cpu")


@pytest.fixture(scope="module")
def start(sample_subject) -> Image.Image:
    return Image.open(next(p for p in sorted((sample_subject / "images").iterdir()) if p.suffix == ".png")).convert("RGB")


@pytest.fixture(scope="module")
def mask() -> Image.Image:
    image = Image.new("L", (64, 64), 0)
    image.paste(255, (16, 16, 48, 40))
    return image


def _edges_source() -> Image.Image:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((12, 12, 44, 50), fill="white")
    return image


def _vae_reconstruction(pipe, image: Image.Image) -> Image.Image:
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        decoded = pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mode()).sample
    return Image.fromarray(((decoded[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy())


def test_canny_edges_are_thin_and_follow_the_thresholds():
    edges = np.asarray(canny_edges(_edges_source()).convert("L")) > 0
    assert edges[12:51, 11:14].any() and edges[12:51, 43:46].any()  # left and right sides of the rectangle
    assert not edges[20:44, 20:38].any() and not edges[55:, :].any()  # nothing in flat areas
    assert edges.sum() < 4 * 40 * 2  # thin: about two pixels across each side
    assert not (np.asarray(canny_edges(_edges_source(), 3000, 3000).convert("L")) > 0).any()
    faint = Image.new("RGB", (64, 64), (100, 100, 100))
    ImageDraw.Draw(faint).rectangle((12, 12, 44, 50), fill=(130, 130, 130))  # a weak edge (L1 gradient 120)
    assert not (np.asarray(canny_edges(faint, 100, 200)) > 0).any()  # weak and never connected to a strong one
    assert (np.asarray(canny_edges(faint, 100, 110)) > 0).any()


def test_inpainting_keeps_the_outside_within_the_vae_error(generator, tiny_lora_run, start, mask):
    lora = [str(tiny_lora_run)]
    raw = generator.generate("tiny-sd", edit_request(init_image=start, mask=mask, keep_outside=False), lora)
    assert raw.mode == "inpaint"
    reconstruction = _vae_reconstruction(generator.pipeline("tiny-sd"), start)
    far = mask.filter(ImageFilter.MaxFilter(17))  # the mask grown by one latent cell (8 px)
    vae_error = outside_difference(reconstruction, start, far)
    assert vae_error > 1  # the tiny VAE is lossy, as real ones are
    assert outside_difference(raw.images[0], start, far) <= vae_error + 0.5
    assert outside_difference(raw.images[0], reconstruction, far) < 0.5  # outside: the start image's own latents
    kept = generator.generate("tiny-sd", edit_request(init_image=start, mask=mask), lora).images[0]
    assert outside_difference(kept, start, mask) == 0  # keep_outside: exactly the start image
    inside = np.asarray(mask) > 0
    assert np.array_equal(grey_levels(kept)[inside], grey_levels(raw.images[0])[inside])
    assert np.abs(grey_levels(kept) - grey_levels(start))[inside].mean() > 10  # the masked part is repainted
    plain = generator.generate("tiny-sd", edit_request(init_image=start, mask=mask)).images[0]
    assert np.abs(grey_levels(kept) - grey_levels(plain))[inside].mean() > 3  # ... by the personalised model


def test_inpainting_base_carries_the_adapter(generator, tiny_lora_run, tiny_dreambooth_run, start, mask):
    ask = edit_request(init_image=start, mask=mask, inpaint_base="tiny-sd-inpaint")
    with_lora = generator.generate("tiny-sd", ask, [str(tiny_lora_run)])
    without = generator.generate("tiny-sd", ask)
    assert with_lora.mode == "inpaint" and with_lora.recipes[0]["inpaint_base"] == "tiny-sd-inpaint"
    assert outside_difference(with_lora.images[0], start, mask) == 0
    assert mean_difference(with_lora.images[0], without.images[0]) > 1
    with pytest.raises(StudioError, match="is an inpainting model"):
        generator.generate("tiny-sd-inpaint", edit_request())
    with pytest.raises(StudioError, match="DreamBooth model is a whole model"):
        generator.generate(str(tiny_dreambooth_run), ask)
    with pytest.raises(StudioError, match="--mask needs --init-image"):
        from studio import limits
        from studio.generate import check_request

        check_request(edit_request(mask=mask), front=limits.CLI)
    blank = Image.new("L", (64, 64), 0)
    with pytest.raises(StudioError, match="mask is empty"):
        generator.generate("tiny-sd", edit_request(init_image=start, mask=blank))


def test_control_image_steers_and_strength_zero_is_plain_generation(generator, tiny_lora_run, start):
    lora = [AdapterRef(str(tiny_lora_run), 0.8)]
    plain = generator.generate("tiny-sd", edit_request(), lora).images[0]
    square = generator.generate("tiny-sd", edit_request(control=ControlSpec("tiny-controlnet", _edges_source())), lora)
    photo = generator.generate("tiny-sd", edit_request(control=ControlSpec("tiny-controlnet", start)), lora).images[0]
    off = generator.generate("tiny-sd", edit_request(control=ControlSpec("tiny-controlnet", start, strength=0.0)), lora)
    assert square.mode == "control"
    assert mean_difference(square.images[0], plain) > 3 and mean_difference(square.images[0], photo) > 3
    assert np.abs(grey_levels(off.images[0]) - grey_levels(plain)).max() <= 1
    as_map = generator.generate("tiny-sd", edit_request(control=ControlSpec("tiny-controlnet", start, preprocess="none")), lora)
    assert mean_difference(as_map.images[0], photo) > 1  # the photo itself vs its canny edges
    both = generator.generate("tiny-sd", edit_request(init_image=start, control=ControlSpec("tiny-controlnet", start)), lora)
    assert both.mode == "control-img2img"
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 40, 40))
    masked = generator.generate("tiny-sd", edit_request(init_image=start, mask=mask,
                                                    control=ControlSpec("tiny-controlnet", start)), lora)
    assert masked.mode == "control-inpaint" and outside_difference(masked.images[0], start, mask) == 0
    with pytest.raises(StudioError, match="another kind of base model"):
        generator.generate("tiny-sd", edit_request(control=ControlSpec("tiny-controlnet-sdxl", start)))
    with pytest.raises(StudioError, match="not a ControlNet"):
        generator.generate("tiny-sd", edit_request(control=ControlSpec("tiny-sd", start)))


def test_control_on_sdxl(generator, tiny_sdxl_lora_run):
    lora = [str(tiny_sdxl_lora_run)]
    plain = generator.generate("tiny-sdxl", edit_request(), lora).images[0]
    steered = generator.generate("tiny-sdxl", edit_request(control=ControlSpec("tiny-controlnet-sdxl", _edges_source())), lora)
    off = generator.generate("tiny-sdxl", edit_request(control=ControlSpec("tiny-controlnet-sdxl", _edges_source(), strength=0)), lora)
    assert mean_difference(steered.images[0], plain) > 1
    assert np.abs(grey_levels(off.images[0]) - grey_levels(plain)).max() <= 1


def test_instruction_edits_with_the_subjects_adapters(generator, tiny_lora_run, tiny_ti_run, tiny_dreambooth_run, start):
    ask = edit_request(prompt="", instruction="put the sks toy on a beach", init_image=start, instruct_base="tiny-sd-instruct")
    edited = generator.generate("tiny-sd", ask, [str(tiny_lora_run)])
    assert edited.mode == "instruct" and edited.images[0].size == (64, 64)
    assert mean_difference(edited.images[0], generator.generate("tiny-sd", ask).images[0]) > 1  # the LoRA applies
    other_start = generator.generate("tiny-sd", edit_request(prompt="", instruction=ask.instruction, instruct_base="tiny-sd-instruct",
                                                         init_image=_edges_source()), [str(tiny_lora_run)])
    assert mean_difference(edited.images[0], other_start.images[0]) > 3  # the edit starts from the image
    ti = generator.generate("tiny-sd", edit_request(prompt="", instruction="put the <sks> toy on a beach", init_image=start,
                                                instruct_base="tiny-sd-instruct"), [str(tiny_ti_run)])
    assert ti.tokens == ["<sks>"]
    with pytest.raises(StudioError, match="not instruction-tuned"):
        generator.generate("tiny-sd", edit_request(prompt="", instruction="make it red", init_image=start))
    with pytest.raises(StudioError, match="DreamBooth model is a whole model"):
        generator.generate(str(tiny_dreambooth_run), ask)


def test_recorded_recipe_regenerates_the_same_pixels(tiny_lora_run, start, mask, tmp_path):
    start_path, mask_path, control_path = tmp_path / "start.png", tmp_path / "mask.png", tmp_path / "control.png"
    start.save(start_path)
    mask.save(mask_path)
    _edges_source().save(control_path)
    out = tmp_path / "made.png"
    assert main(["generate", "--adapter", f"{tiny_lora_run}:0.7", "--prompt", "a photo of sks toy", "--steps", "3",
                 "--seed", "11", "--init-image", str(start_path), "--mask", str(mask_path), "--control", str(control_path),
                 "--controlnet", "tiny-controlnet", "--control-strength", "0.8", "--out", str(out)]) == 0
    recipe = read_recipe(out)
    assert recipe["mode"] == "control-inpaint" and recipe["seed"] == 11 and recipe["steps"] == 3
    assert recipe["adapters"] == [{"path": str(tiny_lora_run.resolve()), "weight": 0.7}]
    assert recipe["base"] == "tiny-sd" and recipe["strength"] == 1.0 and recipe["guidance"] == 7.5
    assert recipe["control"]["model"] == "tiny-controlnet" and recipe["control"]["strength"] == 0.8
    assert recipe["mask"]["path"] == str(mask_path.resolve()) and len(recipe["mask"]["sha256"]) == 64
    again = tmp_path / "again.png"
    assert main(["generate", "--recipe", str(out), "--out", str(again)]) == 0
    assert np.array_equal(grey_levels(Image.open(out).convert("RGB")), grey_levels(Image.open(again).convert("RGB")))
    assert read_recipe(again) == recipe
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    Image.new("L", (64, 64), 255).save(mask_path)  # the mask changed: the same image cannot be made
    assert main(["generate", "--recipe", str(tmp_path / "recipe.json"), "--out", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()


def test_playground_and_browser_inputs(tiny_lora_run, start, tmp_path, tiny_data_dir):
    from studio.playground import Playground, Request
    from webui.generate_inputs import editor_inputs

    root = tmp_path / "data"
    folder = root / "generated" / "one"
    folder.mkdir(parents=True)
    start.save(root / "start.png")
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(layer).ellipse((20, 20, 44, 44), fill=(255, 0, 255, 255))  # the painted brush stroke
    layer.save(root / "layer.png")
    empty = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    empty.save(root / "empty.png")
    init, mask = editor_inputs({"background": str(root / "start.png"), "layers": [str(root / "layer.png")]}, root, folder)
    assert init == str(folder / "start.png") and mask == str(folder / "mask.png")
    assert 0 < (np.asarray(Image.open(mask)) > 0).mean() < 0.5
    assert editor_inputs({"background": str(root / "start.png"), "layers": [str(root / "empty.png")]}, root, folder)[1] is None
    with pytest.raises(StudioError, match="outside"):
        editor_inputs({"background": str(tmp_path / "elsewhere.png"), "layers": []}, root, folder)

    playground = Playground("cpu")
    made = list(playground.generate_each([tiny_lora_run], Request("a photo of sks toy", steps=3, init_image=init,
                                                                  mask=mask, strength=None)))
    assert [role for role, _, _ in made] == ["personalised", "base"]
    for _, image, recipe in made:
        assert recipe["mode"] == "inpaint" and outside_difference(image, Image.open(init).convert("RGB"),
                                                                  Image.open(mask)) == 0
    assert made[1][2]["prompt"] == "a photo of toy" and made[1][2]["adapters"] == []
