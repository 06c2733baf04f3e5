"""studio.generate: cached pipelines, adapters of every format, LoRA composition, img2img, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from studio.adapters import AdapterError, resolve_adapter
from studio.cli import main
from studio.export.lora_kohya import save_kohya_lora
from studio.export.lora_weights import LoraModule, LoraWeights, read_diffusers_lora
from studio.families.sd import StableDiffusionFamily
from studio.generate import AdapterRef, GenerationRequest, Generator


def _request(**overrides) -> GenerationRequest:
    values = dict(prompt="a photo of sks toy", steps=3, seed=7, height=64, width=64)
    return GenerationRequest(**(values | overrides))


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def generator():
    return Generator(device="cpu")


@pytest.fixture(scope="module")
def second_lora(tiny_lora_run, tmp_path_factory):
    """Another LoRA on other modules' scale (doubled, kohya layout): visibly different from the first."""
    weights = read_diffusers_lora(tiny_lora_run / "adapter" / "pytorch_lora_weights.safetensors")
    doubled = LoraWeights([LoraModule(m.component, m.path, m.down, -3 * m.up, m.alpha) for m in weights.modules])
    path = tmp_path_factory.mktemp("loras") / "other.safetensors"
    return save_kohya_lora(doubled, path, StableDiffusionFamily(), {"title": "other"})


def test_formats_are_detected_from_keys(tiny_lora_run, tiny_ti_run, tiny_lora_export, tiny_ti_export):
    assert resolve_adapter(tiny_lora_run).format == "diffusers"
    assert resolve_adapter(tiny_lora_export.out_dir / "sks-toy-lora.safetensors").format == "kohya"
    assert resolve_adapter(tiny_lora_export.out_dir / "peft").format == "peft"
    ti = resolve_adapter(tiny_ti_run)
    assert (ti.kind, ti.token) == ("embedding", "<sks>")
    a1111 = resolve_adapter(tiny_ti_export.out_dir / "sks.safetensors")
    assert (a1111.format, a1111.token) == ("a1111", "sks")


def test_bad_adapter_files_give_clear_errors(tiny_lora_run, tmp_path):
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((tiny_lora_run / "adapter" / "pytorch_lora_weights.safetensors").read_bytes()[:5000])
    foreign = tmp_path / "foreign.safetensors"
    save_file({"conv.weight": torch.zeros(2, 2), "conv.bias": torch.zeros(2)}, str(foreign))
    pickled = tmp_path / "embedding.pt"
    pickled.write_bytes(b"not really")
    for path, message in ((noise, "not a readable safetensors"), (truncated, "truncated"),
                          (foreign, "neither LoRA"), (pickled, "pickle"), (tmp_path / "missing.safetensors", "does not exist")):
        with pytest.raises(AdapterError, match=message):
            resolve_adapter(path)
    assert main(["generate", "--base", "tiny-sd", "--adapter", str(foreign), "--prompt", "x",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()


def test_composition_with_weight_zero_equals_first_alone_without_reloading(generator, tiny_lora_run, second_lora):
    alone = generator.generate("tiny-sd", _request(), [str(tiny_lora_run)]).images[0]
    loads = generator.loads
    composed = generator.generate("tiny-sd", _request(), [AdapterRef(str(tiny_lora_run), 1.0),
                                                          AdapterRef(str(second_lora), 0.0)]).images[0]
    both = generator.generate("tiny-sd", _request(), [f"{tiny_lora_run}:1", f"{second_lora}:1"]).images[0]
    plain = generator.generate("tiny-sd", _request()).images[0]
    assert generator.loads == loads  # new weights and adapters reuse the loaded base
    assert np.abs(_array(alone) - _array(composed)).max() <= 1
    assert np.abs(_array(alone) - _array(both)).max() > 5
    assert np.abs(_array(alone) - _array(plain)).max() > 5


def test_exported_files_generate_like_the_run(generator, tiny_lora_run, tiny_lora_export, tiny_ti_run, tiny_ti_export):
    from_run = _array(generator.generate("tiny-sd", _request(), [str(tiny_lora_run)]).images[0])
    for path in (tiny_lora_export.out_dir / "sks-toy-lora.safetensors", tiny_lora_export.out_dir / "peft"):
        image = generator.generate("tiny-sd", _request(), [str(path)]).images[0]
        assert np.abs(_array(image) - from_run).max() <= 1, path
    ti_run = generator.generate("tiny-sd", _request(prompt="a photo of <sks> toy"), [str(tiny_ti_run)])
    a1111 = generator.generate("tiny-sd", _request(), [str(tiny_ti_export.out_dir / "sks.safetensors")])
    assert ti_run.tokens == ["<sks>"] and a1111.tokens == ["sks"]
    assert np.abs(_array(ti_run.images[0]) - _array(a1111.images[0])).max() <= 1


def test_seeds_batches_and_dreambooth_base(generator, tiny_dreambooth_run):
    result = generator.generate(str(tiny_dreambooth_run), _request(num_images=2, negative_prompt="blurry"))
    assert result.seeds == [7, 8] and len(result.images) == 2 and result.images[0].size == (64, 64)
    single = generator.generate(str(tiny_dreambooth_run), _request(seed=8, negative_prompt="blurry")).images[0]
    assert np.abs(_array(single) - _array(result.images[1])).max() <= 1  # an image depends on its seed only
    with pytest.raises(AdapterError, match="--base"):
        resolve_adapter(tiny_dreambooth_run)


def test_img2img_and_strength_zero(generator, tmp_path):
    init = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3)))
    still = generator.generate("tiny-sd", _request(init_image=init, strength=0.0))
    assert still.mode == "img2img-passthrough"
    assert np.array_equal(_array(still.images[0]), _array(init))  # no denoising step: the init image itself
    tiny = generator.generate("tiny-sd", _request(init_image=init, strength=0.2))  # int(3 * 0.2) = 0 steps
    assert tiny.mode == "img2img-passthrough"
    changed = generator.generate("tiny-sd", _request(init_image=init, strength=0.7))
    assert changed.mode == "img2img" and changed.images[0].size == (64, 64)


def test_cli_generate_writes_images(tiny_lora_run, tmp_path):
    out = tmp_path / "images"
    assert main(["generate", "--adapter", f"{tiny_lora_run}:0.8", "--prompt", "a photo of sks toy", "--steps", "2",
                 "--seed", "3", "-n", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["3.png", "4.png"]
    assert "seed" in Image.open(out / "3.png").text["parameters"]
