"""ControlNet and inpainting on the flow families (Flux.1, SD3.5), on the built-in tiny models (64 px, 3 steps).

What is proven, through the one Generator the CLI, the Python API and the Generate tab share:
- Flux ControlNet (FluxControlNetPipeline and its img2img / inpainting variants) with the subject's LoRA, and
  SD3.5 ControlNet (StableDiffusion3ControlNetPipeline): the control image changes the output, another
  control image changes it differently, and control strength 0 gives the plain generation's pixels;
- Flux inpainting (FluxInpaintPipeline, mask blending on the plain model) keeps the outside exactly and
  the LoRA changes what is painted inside; SD3 inpainting (StableDiffusion3InpaintPipeline, which takes only a
  16-channel transformer: tiny-sd3 with a 16-channel VAE and transformer, built here) blends the start image;
- task pipelines keep the base's dtype;
- a ControlNet made for another family is refused before any denoising step;
- the recipe recorded in each PNG regenerates the same pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image, ImageDraw
from test_generate_edits import edit_request, grey_levels, mean_difference

from studio.cli import main
from studio.control import ControlSpec
from studio.errors import StudioError
from studio.generate import AdapterRef, Generator
from studio.inpaint import outside_difference
from studio.recipe import read_recipe


def _square() -> Image.Image:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((12, 12, 44, 50), fill="white")
    return image


def _disc() -> Image.Image:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).ellipse((20, 4, 60, 40), fill="white")
    return image


@pytest.fixture(scope="module")
def generator(tiny_data_dir):
    return Generator(device="cpu")


@pytest.fixture(scope="module")
def flux_lora(sample_subject, tmp_path_factory):
    import trainers

    directory = tmp_path_factory.mktemp("runs") / "flux-lora"
    trainers.train(tiny_config("lora", base="tiny-flux", steps=4, batch_size=1, learning_rate=1e-2,
                               train_text_encoder=True), sample_subject, directory)
    return directory


@pytest.fixture(scope="module")
def mask() -> Image.Image:
    image = Image.new("L", (64, 64), 0)
    image.paste(255, (16, 16, 48, 40))
    return image


def test_tiny_flow_controlnets_are_plain_diffusers_folders(tiny_data_dir):
    from diffusers import FluxControlNetModel, SD3ControlNetModel, SD3Transformer2DModel

    from studio.models import builtin_path

    flux = FluxControlNetModel.from_pretrained(str(builtin_path("tiny-controlnet-flux")))
    sd3 = SD3ControlNetModel.from_pretrained(str(builtin_path("tiny-controlnet-sd3")))
    base = SD3Transformer2DModel.from_pretrained(str(builtin_path("tiny-sd3")), subfolder="transformer")
    assert flux.config.guidance_embeds and len(flux.transformer_blocks) == len(flux.single_transformer_blocks) == 1
    assert sd3.config.joint_attention_dim == base.config.joint_attention_dim and len(sd3.transformer_blocks) == 1
    # the first joint block is the base's (as diffusers' from_transformer copies it); the control paths are not zero
    assert all(np.array_equal(value.numpy(), base.transformer_blocks[0].state_dict()[key].numpy())
               for key, value in sd3.transformer_blocks[0].state_dict().items())
    assert flux.controlnet_x_embedder.weight.abs().sum() > 0 and sd3.pos_embed_input.proj.weight.abs().sum() > 0
    assert all(block.weight.abs().sum() > 0 for block in [*flux.controlnet_blocks, *sd3.controlnet_blocks])


def test_flux_control_with_the_lora_steers_and_strength_zero_is_plain(generator, flux_lora, sample_subject, mask):
    lora = [AdapterRef(str(flux_lora), 0.8)]
    plain = generator.generate("tiny-flux", edit_request(), lora).images[0]
    square = generator.generate("tiny-flux", edit_request(control=ControlSpec("tiny-controlnet-flux", _square())), lora)
    disc = generator.generate("tiny-flux", edit_request(control=ControlSpec("tiny-controlnet-flux", _disc())), lora).images[0]
    off = generator.generate("tiny-flux", edit_request(control=ControlSpec("tiny-controlnet-flux", _square(), strength=0)), lora)
    assert square.mode == "control" and square.adapters
    assert mean_difference(square.images[0], plain) > 3 and mean_difference(square.images[0], disc) > 1
    assert np.abs(grey_levels(off.images[0]) - grey_levels(plain)).max() <= 1
    without_lora = generator.generate("tiny-flux", edit_request(control=ControlSpec("tiny-controlnet-flux", _square())))
    assert mean_difference(square.images[0], without_lora.images[0]) > 1  # the subject's LoRA acts under the ControlNet
    start = _disc()
    both = generator.generate("tiny-flux", edit_request(init_image=start, strength=0.9,
                                                    control=ControlSpec("tiny-controlnet-flux", _square())), lora)
    assert both.mode == "control-img2img" and both.images[0].size == (64, 64)
    masked = generator.generate("tiny-flux", edit_request(init_image=start, mask=mask,
                                                      control=ControlSpec("tiny-controlnet-flux", _square())), lora)
    assert masked.mode == "control-inpaint" and outside_difference(masked.images[0], start, mask) == 0
    inside = np.asarray(mask) > 0
    assert np.abs(grey_levels(masked.images[0]) - grey_levels(start))[inside].mean() > 10


def test_flux_inpainting_keeps_the_outside_and_paints_the_subject(generator, flux_lora, mask):
    start = _disc()
    lora = [str(flux_lora)]
    kept = generator.generate("tiny-flux", edit_request(init_image=start, mask=mask), lora)
    raw = generator.generate("tiny-flux", edit_request(init_image=start, mask=mask, keep_outside=False), lora).images[0]
    plain = generator.generate("tiny-flux", edit_request(init_image=start, mask=mask)).images[0]
    inside = np.asarray(mask) > 0
    assert kept.mode == "inpaint" and outside_difference(kept.images[0], start, mask) == 0
    assert outside_difference(raw, start, mask) > 0  # without the overlay: the VAE's reconstruction outside
    assert np.array_equal(grey_levels(kept.images[0])[inside], grey_levels(raw)[inside])
    assert np.abs(grey_levels(kept.images[0]) - grey_levels(start))[inside].mean() > 10  # the masked part is repainted
    assert np.abs(grey_levels(kept.images[0]) - grey_levels(plain))[inside].mean() > 1  # ... by the personalised model


def test_sd3_control_steers_and_strength_zero_is_plain(generator):
    plain = generator.generate("tiny-sd3", edit_request()).images[0]
    square = generator.generate("tiny-sd3", edit_request(control=ControlSpec("tiny-controlnet-sd3", _square())))
    disc = generator.generate("tiny-sd3", edit_request(control=ControlSpec("tiny-controlnet-sd3", _disc()))).images[0]
    off = generator.generate("tiny-sd3", edit_request(control=ControlSpec("tiny-controlnet-sd3", _square(), strength=0)))
    assert square.mode == "control"
    assert mean_difference(square.images[0], plain) > 3 and mean_difference(square.images[0], disc) > 1
    assert np.abs(grey_levels(off.images[0]) - grey_levels(plain)).max() <= 1
    pair = generator.generate("tiny-sd3", edit_request(seed=6, num_images=2, control=ControlSpec("tiny-controlnet-sd3", _square())))
    assert np.array_equal(grey_levels(pair.images[1]), grey_levels(square.images[0]))  # an image depends only on its seed
    with pytest.raises(StudioError, match="Stable Diffusion 3.5 models have no pipeline for ControlNet with a start image"):
        generator.generate("tiny-sd3", edit_request(init_image=_disc(), control=ControlSpec("tiny-controlnet-sd3", _square())))


@pytest.mark.parametrize(("base", "controlnet", "message"), [
    ("tiny-flux", "tiny-controlnet-sd3", "SD3ControlNetModel, made for Stable Diffusion 3.5 models; the base is a Flux.1"),
    ("tiny-sd3", "tiny-controlnet-flux", "FluxControlNetModel, made for Flux.1 models; the base is a Stable Diffusion 3.5"),
    ("tiny-flux", "tiny-controlnet", "ControlNetModel, made for .*Stable Diffusion 1.x models; the base is a Flux.1"),
    ("tiny-sd", "tiny-controlnet-flux", "FluxControlNetModel, made for Flux.1 models; the base is a Stable Diffusion 1.x"),
    ("tiny-sdxl", "tiny-controlnet", "made for another kind of base model \\(cross_attention_dim"),  # same class, other widths
])
def test_a_controlnet_of_another_family_is_refused_before_generating(generator, base, controlnet, message):
    steps: list[int] = []
    with pytest.raises(StudioError, match=message):
        generator.generate(base, edit_request(control=ControlSpec(controlnet, _square())), progress=lambda s, t: steps.append(s))
    assert steps == []  # not one denoising step ran


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_flow_recipe_regenerates_the_same_pixels(family, flux_lora, tmp_path):
    control_path, out = tmp_path / "control.png", tmp_path / "made.png"
    _square().save(control_path)
    adapters = ["--adapter", f"{flux_lora}:0.7"] if family == "flux" else []
    assert main(["generate", "--base", f"tiny-{family}", *adapters, "--prompt", "a photo of sks toy", "--steps", "3",
                 "--seed", "11", "--width", "64", "--height", "64", "--control", str(control_path),
                 "--controlnet", f"tiny-controlnet-{family}", "--control-strength", "0.8", "--out", str(out)]) == 0
    recipe = read_recipe(out)
    assert recipe["mode"] == "control" and recipe["base"] == f"tiny-{family}" and recipe["seed"] == 11
    assert recipe["control"]["model"] == f"tiny-controlnet-{family}" and recipe["control"]["strength"] == 0.8
    assert len(recipe["adapters"]) == (1 if family == "flux" else 0)
    again = tmp_path / "again.png"
    assert main(["generate", "--recipe", str(out), "--out", str(again)]) == 0
    assert np.array_equal(grey_levels(Image.open(out).convert("RGB")), grey_levels(Image.open(again).convert("RGB")))
    assert read_recipe(again) == recipe


def test_task_pipelines_keep_the_base_dtype(tiny_data_dir, mask):
    """diffusers' from_pipe casts the shared components to fp32 unless told the dtype: on a GPU (fp16/bf16) the
    first ControlNet or inpainting image would double the base's memory and stop matching plain generation."""
    import torch

    generator = Generator(device="cpu", dtype=torch.bfloat16)
    small = dict(steps=1, width=32, height=32)
    generator.generate("tiny-flux", edit_request(**small, control=ControlSpec("tiny-controlnet-flux", _square())))
    generator.generate("tiny-flux", edit_request(**small, strength=1.0, init_image=_disc().resize((32, 32)),
                                             mask=mask.resize((32, 32))))
    pipe = generator.pipeline("tiny-flux")
    assert {pipe.transformer.dtype, pipe.vae.dtype, pipe.text_encoder.dtype, pipe.text_encoder_2.dtype} == {torch.bfloat16}


@pytest.fixture(scope="module")
def sd3_16_channels(tmp_path_factory, tiny_data_dir):
    """tiny-sd3 with a 16-channel VAE and transformer (diffusers' SD3 inpainting accepts 16 or 33 channels only)."""
    import torch
    from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline

    from studio.models import builtin_path

    pipe = StableDiffusion3Pipeline.from_pretrained(str(builtin_path("tiny-sd3")))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = SD3Transformer2DModel.from_config({**pipe.transformer.config, "in_channels": 16, "out_channels": 16})
        vae = AutoencoderKL(latent_channels=16, block_out_channels=(32,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, sample_size=64,
                            scaling_factor=1.5305, shift_factor=0.0609)
    with torch.no_grad():  # a posterior without spread, as tiny-sd3's VAE: encoding a start image adds no noise
        vae.encoder.conv_out.weight[16:] = 0
        vae.encoder.conv_out.bias[16:] = -20.0
    folder = tmp_path_factory.mktemp("sd3-16") / "model"
    StableDiffusion3Pipeline(**(pipe.components | {"transformer": transformer, "vae": vae})).save_pretrained(str(folder))
    return folder


def test_sd3_inpainting_blends_on_the_plain_model(generator, sd3_16_channels, mask):
    start, base = _disc(), str(sd3_16_channels)
    raw = generator.generate(base, edit_request(init_image=start, mask=mask, keep_outside=False))
    other_start = generator.generate(base, edit_request(init_image=_square(), mask=mask, keep_outside=False)).images[0]
    kept = generator.generate(base, edit_request(init_image=start, mask=mask)).images[0]
    assert raw.mode == "inpaint" and raw.recipes[0]["strength"] == 1.0
    # at strength 1 the masked part starts from pure noise: the start image enters only through the blended
    # outside latents, so another start image with the same seed gives another image
    assert mean_difference(raw.images[0], other_start) > 1  # (0 if the start image were ignored)
    inside = np.asarray(mask) > 0
    assert outside_difference(kept, start, mask) == 0
    assert np.array_equal(grey_levels(kept)[inside], grey_levels(raw.images[0])[inside])
    assert np.abs(grey_levels(kept) - grey_levels(start))[inside].mean() > 10  # the masked part is repainted


def test_an_sd35_style_controlnet_folder_is_taken(generator, tmp_path):
    """SD3.5 Large's own ControlNets (Stability AI's 8B blur/canny/depth) read no text
    (joint_attention_dim None) and take the base's patch embedding (use_pos_embed False): a folder of one fits."""
    import torch
    from diffusers import SD3ControlNetModel, SD3Transformer2DModel

    from studio.models import builtin_path

    config = SD3Transformer2DModel.load_config(str(builtin_path("tiny-sd3")), subfolder="transformer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        controlnet = SD3ControlNetModel(
            sample_size=config["sample_size"], patch_size=config["patch_size"], in_channels=config["in_channels"],
            num_layers=1, attention_head_dim=config["attention_head_dim"], num_attention_heads=config["num_attention_heads"],
            joint_attention_dim=None, pooled_projection_dim=config["pooled_projection_dim"],
            out_channels=config["out_channels"], pos_embed_type=None, use_pos_embed=False,
            force_zeros_for_pooled_projection=True)
        with torch.no_grad():
            for block in controlnet.controlnet_blocks:
                block.weight.normal_(0, 0.05)
            controlnet.pos_embed_input.proj.weight.normal_(0, 1)
    controlnet.save_pretrained(str(tmp_path / "sd35-controlnet"))
    folder = str(tmp_path / "sd35-controlnet")
    plain = generator.generate("tiny-sd3", edit_request()).images[0]
    steered = generator.generate("tiny-sd3", edit_request(control=ControlSpec(folder, _square()))).images[0]
    off = generator.generate("tiny-sd3", edit_request(control=ControlSpec(folder, _square(), strength=0))).images[0]
    assert mean_difference(steered, plain) > 1
    assert np.abs(grey_levels(off) - grey_levels(plain)).max() <= 1
