"""fp8 storage of the frozen base (base_quantization fp8, trainers/fp8.py, torch's float8_e4m3fn on the CPU):
the layer stays close to the full-precision one and stores 1 byte a value; a LoRA run on it learns with
fp32 adapter tensors, and the saved adapter is an ordinary one for the unquantized base."""

from __future__ import annotations

import torch
from conftest import tiny_config
from safetensors.torch import load_file

from trainers import METHODS
from trainers.base import Trainer, prepare_run_dir
from trainers.fp8 import FP8, Float8Linear
from trainers.quantize import is_quantized, quantize_module


def test_fp8_layer_is_close_stores_one_byte_and_passes_gradients():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    model.requires_grad_(False)
    x = torch.randn(8, 128, requires_grad=True)
    reference = model(x)
    (expected,) = torch.autograd.grad(reference.sum(), x)
    assert quantize_module(model, "fp8", compute_dtype=torch.float32, device=torch.device("cpu")) == 2
    layer = model[0]
    assert isinstance(layer, Float8Linear) and layer.weight.dtype == FP8 and layer.weight.element_size() == 1
    assert all(p.dtype != FP8 for p in model.parameters())  # diffusers' ModelMixin.dtype reads parameters
    output = model(x)
    error = (output - reference).norm() / reference.norm()
    assert 0 < error < 0.05, float(error)
    (grad,) = torch.autograd.grad(output.sum(), x)
    assert (grad - expected).norm() / expected.norm() < 0.05
    model.to(torch.bfloat16)  # a whole-model cast keeps the stored weight fp8
    assert layer.weight.dtype == FP8 and layer.scale.dtype == torch.float32


def _fixed_noise_losses(directory) -> tuple[float, float]:
    """Fixed-noise loss of the unquantized base, then of the unquantized base with the saved adapter."""
    from studio.models import load_base
    from studio.runs import load_run, personalised_pipeline
    from trainers.data import load_image_tensors
    from trainers.fixed_loss import fixed_noise_loss

    run = load_run(directory)
    images = load_image_tensors(run.subject.image_paths, run.config.resolution)
    prompt = run.prompt("a {0} {1}")
    base = load_base(run.config.base).pipeline
    personalised = personalised_pipeline(run)
    assert not is_quantized(personalised.unet)
    return fixed_noise_loss(base, images, prompt), fixed_noise_loss(personalised, images, prompt)


def test_lora_on_an_fp8_base_learns_and_exports_an_ordinary_adapter(sample_subject, tmp_path):
    config = tiny_config("lora", steps=25, base_quantization="fp8")
    directory = tmp_path / "run"
    prepare_run_dir(config, sample_subject, directory)
    trainer = Trainer(METHODS["lora"], config, directory)
    trainer.run()
    unet = trainer.components["unet"]
    fp8 = [m for m in unet.modules() if isinstance(m, Float8Linear)]
    assert fp8 and len(fp8) == trainer.quantized_layers
    lora = {n: p for n, p in unet.named_parameters() if "lora_" in n}
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora.values())
    trainable = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    saved = load_file(str(directory / "adapter/pytorch_lora_weights.safetensors"))
    assert saved and all(t.dtype == torch.float32 for t in saved.values())
    assert not any("scale" in k or "base_layer" in k or k.endswith(".weight") and "lora" not in k for k in saved)
    before, after = _fixed_noise_losses(directory)
    assert after < before * 0.95, f"fixed-noise loss {before:.4f} -> {after:.4f}"
