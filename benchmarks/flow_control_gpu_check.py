"""GPU only: Flux.1 and SD3.5 ControlNet through Studio's Generator on CUDA in fp16, on the tiny models.

Checks what the CPU tests check, where device and precision differ: control strength 0 gives the plain image,
the control image changes it, the same request gives the same pixels again (the recipe's promise), and an
image of a batch equals the same seed alone (SD3's ControlNet pipeline draws from the global CUDA RNG).

    python -m benchmarks.flow_control_gpu_check
"""

from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from studio.control import ControlSpec
from studio.generate import GenerationRequest, Generator

CONTROLNETS = {"tiny-flux": "tiny-controlnet-flux", "tiny-sd3": "tiny-controlnet-sd3", "tiny-sd": "tiny-controlnet"}


def _request(**overrides) -> GenerationRequest:
    return GenerationRequest(**(dict(prompt="a photo of sks toy", steps=3, seed=7, height=64, width=64) | overrides))


def _square() -> Image.Image:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((12, 12, 44, 50), fill="white")
    return image


def _a(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def main() -> None:
    for dtype in (torch.float16, torch.float32):
        check(Generator(device="cuda", dtype=dtype))


def check(generator: Generator) -> None:
    print(f"device {torch.cuda.get_device_name()} dtype {generator.dtype}")
    for base, controlnet in CONTROLNETS.items():
        plain = generator.generate(base, _request()).images[0]
        start = time.perf_counter()
        steered = generator.generate(base, _request(control=ControlSpec(controlnet, _square()))).images[0]
        seconds = time.perf_counter() - start
        again = generator.generate(base, _request(control=ControlSpec(controlnet, _square()))).images[0]
        off = generator.generate(base, _request(control=ControlSpec(controlnet, _square(), strength=0))).images[0]
        pair = generator.generate(base, _request(seed=6, num_images=2, control=ControlSpec(controlnet, _square()))).images
        print(f"{base}: control changes {np.abs(_a(steered) - _a(plain)).mean():.2f} (mean 0-255), "
              f"strength 0 vs plain max {np.abs(_a(off) - _a(plain)).max()}, again equal {np.array_equal(_a(steered), _a(again))}, "
              f"batch image = alone {np.array_equal(_a(pair[1]), _a(steered))} (max {np.abs(_a(pair[1]) - _a(steered)).max()}), "
              f"means plain/steered/off {_a(plain).mean():.1f}/{_a(steered).mean():.1f}/{_a(off).mean():.1f}, {seconds:.2f} s")


if __name__ == "__main__":
    main()
