"""Quantized frozen base (base_quantization int8 / nf4, bitsandbytes on the CPU): the run learns, the
adapter stays fp32 and its saved file is the one an unquantized run writes (same keys, shapes, dtypes)."""

from __future__ import annotations

import gc
import weakref
from copy import deepcopy

import bitsandbytes as bnb
import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file
from torch.utils.checkpoint import checkpoint

from studio.errors import ConfigError
from trainers import METHODS
from trainers.base import Trainer, prepare_run_dir
from trainers.quantize import check_quantization, is_quantized, quantize_module

ADAPTER = "adapter/pytorch_lora_weights.safetensors"


def _train(method, subject, directory, **overrides) -> Trainer:
    config = tiny_config(method, **overrides)
    prepare_run_dir(config, subject, directory)
    trainer = Trainer(METHODS[method], config, directory)
    trainer.result = trainer.run()
    return trainer


@pytest.fixture(scope="module")
def lora_runs(sample_subject, tmp_path_factory):
    runs = {}
    for kind in ("none", "nf4", "int8"):  # the unquantized run is only compared file against file: 2 steps do
        directory = tmp_path_factory.mktemp(f"q-{kind}") / "run"
        steps = 2 if kind == "none" else 120
        runs[kind] = (_train("lora", sample_subject, directory, steps=steps, base_quantization=kind), directory)
    return runs


def _fixed_noise_losses(directory) -> tuple[float, float]:
    """Fixed-noise loss on the instance images: the unquantized base, then the unquantized base with the
    adapter the quantized run saved (what a user of the export gets)."""
    from studio.models import load_base
    from studio.runs import load_run, personalised_pipeline
    from trainers.data import load_image_tensors
    from trainers.fixed_loss import fixed_noise_loss

    run = load_run(directory)
    images = load_image_tensors(run.subject.image_paths, run.config.resolution)
    prompt = run.prompt("a {0} {1}")
    return (fixed_noise_loss(load_base(run.config.base).pipeline, images, prompt),
            fixed_noise_loss(personalised_pipeline(run), images, prompt))


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_quantized_lora_learns_with_fp32_adapter(lora_runs, kind):
    trainer, directory = lora_runs[kind]
    unet = trainer.components["unet"]
    layer = bnb.nn.Linear4bit if kind == "nf4" else bnb.nn.Linear8bitLt
    quantized = [m for m in unet.modules() if isinstance(m, layer)]
    assert len(quantized) == trainer.quantized_layers > 0
    assert quantized[0].weight.dtype == (torch.uint8 if kind == "nf4" else torch.int8)
    trainable = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    lora = {n: p for n, p in unet.named_parameters() if "lora_" in n}
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora.values())
    # the trained LoRA moved away from its initialisation (lora_B starts at zero)
    assert any(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
    before, after = _fixed_noise_losses(directory)
    assert after < before * 0.95, f"{kind}: fixed-noise loss {before:.4f} -> {after:.4f}"


def test_quantized_export_is_an_ordinary_adapter(lora_runs):
    plain = load_file(str(lora_runs["none"][1] / ADAPTER))
    for kind in ("nf4", "int8"):
        saved = load_file(str(lora_runs[kind][1] / ADAPTER))
        assert saved.keys() == plain.keys()
        for key, tensor in plain.items():
            assert saved[key].shape == tensor.shape and saved[key].dtype == tensor.dtype, key
        assert not any("quant" in k or "absmax" in k or "SCB" in k or "base_layer" in k for k in saved)
        # and it loads into the unquantized tiny-sd like any adapter
        from studio.models import load_base

        pipe = load_base("tiny-sd").pipeline
        pipe.load_lora_weights(str(lora_runs[kind][1] / "adapter"))
        assert not is_quantized(pipe.unet)


def test_quantize_module_keeps_outputs_close():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    model.requires_grad_(False)
    x = torch.randn(8, 128)
    reference = model(x)
    for kind, tolerance in (("int8", 0.02), ("nf4", 0.15)):
        copy = deepcopy(model)
        assert quantize_module(copy, kind, compute_dtype=torch.float32, device=torch.device("cpu")) == 2
        error = (copy(x) - reference).norm() / reference.norm()
        assert error < tolerance, (kind, float(error))
        assert error > 0  # it really is quantized


@pytest.mark.parametrize("kind", ["nf4", "int8", "fp8"])
def test_quantized_layer_answers_in_the_autocast_dtype_as_linear_does(kind):
    """Under autocast an fp32 input (what a norm gives on CUDA) must come out in the autocast dtype, as from
    nn.Linear: bitsandbytes answered in the input's fp32, which made Flux's whole residual stream fp32 (+2.2 GiB
    on the H200). Outside autocast the layer answers in its input's dtype."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 64))
    model.requires_grad_(False)
    quantized = deepcopy(model)
    quantize_module(quantized, kind, compute_dtype=torch.bfloat16, device=torch.device("cpu"))
    x = torch.randn(4, 128, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(x).dtype
        answered = quantized(x)
    assert expected == torch.bfloat16 and answered.dtype == expected
    answered.float().sum().backward()  # the gradient reaches the fp32 input
    assert x.grad is not None and x.grad.dtype == torch.float32
    assert quantized(x).dtype == torch.float32


def test_textual_inversion_on_a_quantized_base(sample_subject, tmp_path):
    trainer = _train("textual_inversion", sample_subject, tmp_path / "run", steps=8, base_quantization="nf4")
    assert is_quantized(trainer.components["unet"])
    trainable = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    saved = list((tmp_path / "run" / trainer.result["artifact"]).glob("*.safetensors"))
    assert saved and all(t.dtype == torch.float32 for f in saved for t in load_file(str(f)).values())


def test_unsupported_combinations_name_the_setting():
    with pytest.raises(ConfigError, match="base_quantization"):
        check_quantization(tiny_config("dreambooth", base_quantization="nf4"))
    with pytest.raises(ConfigError, match="adapter_type=lora"):
        check_quantization(tiny_config("lora", base_quantization="int8", adapter_type="dora"))
    check_quantization(tiny_config("lora", base_quantization="nf4"))


def test_quantized_run_renders_samples_and_checkpoints(sample_subject, tmp_path):
    """Samples run the pipeline through the quantized denoiser; checkpoints hold the fp32 adapter only."""
    trainer = _train("lora", sample_subject, tmp_path / "run", steps=4, base_quantization="nf4", sample_every=2,
                     sample_steps=2, checkpoint_every=2, validation=False)
    assert is_quantized(trainer.components["unet"])
    assert list((tmp_path / "run").glob("samples/step-*/*.png"))
    saved = [load_file(str(p)) for p in (tmp_path / "run").rglob("trainable.safetensors")]
    assert saved and all(t.dtype == torch.float32 for state in saved for t in state.values())
    assert all("lora" in key for state in saved for key in state)


@pytest.mark.parametrize("kind", ["nf4", "fp8"])
def test_checkpointing_drops_a_quantized_weight_between_forward_and_backward(kind):
    """Block swapping relies on gradient checkpointing dropping what a block's forward saved: a swapped block's
    device copy must be freed once the block releases it, and come back through the recompute. bitsandbytes'
    own 4-bit node kept the packed weight until the backward (so every swapped NF4 block stayed on the device)."""
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(64, 64))
    layer.requires_grad_(False)
    quantize_module(layer, kind, compute_dtype=torch.float32, device=torch.device("cpu"))
    quantized = layer[0]
    resident = quantized.weight.data

    def install(tensor: torch.Tensor) -> None:
        if kind == "fp8":
            quantized.weight = tensor
        else:
            quantized.weight.data = tensor

    install(resident.clone())  # the "device copy" a swapper puts in place before the block runs
    copy_storage = weakref.ref(quantized.weight.untyped_storage())
    x = torch.randn(8, 64, requires_grad=True)
    out = checkpoint(layer, x, use_reentrant=False)
    install(resident)  # released after the forward; the recompute will read the resident tensor
    gc.collect()
    assert copy_storage() is None, "the forward's graph still holds the released weight"
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["nf4", "int8", "fp8"])
def test_checkpointing_drops_what_a_quantized_layer_saw(kind):
    """Gradient checkpointing must drop a quantized layer's input between the forward and the backward: bitsandbytes'
    int8 node kept it as a plain attribute, so every int8 layer's input stayed as if nothing were checkpointed."""
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(64, 64))
    layer.requires_grad_(False)
    quantize_module(layer, kind, compute_dtype=torch.float32, device=torch.device("cpu"))
    seen = []
    layer[0].register_forward_pre_hook(lambda _m, args: seen.append(weakref.ref(args[0].untyped_storage())))
    x = torch.randn(8, 64, requires_grad=True)
    out = checkpoint(lambda t: layer(t * 2), x, use_reentrant=False)  # the layer's input exists only inside
    gc.collect()
    assert seen and seen[0]() is None, "the forward's graph still holds the layer's input"
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_studio_quantized_layer_gives_bitsandbytes_own_output_and_gradient(kind):
    """Studio's layer runs bitsandbytes' matmul inside its own autograd function: the same output, and the gradient
    reaching the input is the one bitsandbytes' own node gives (the dequantized weight's), not merely finite."""
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(64, 32))
    layer.requires_grad_(False)
    quantize_module(layer, kind, compute_dtype=torch.float32, device=torch.device("cpu"))
    quantized = layer[0]
    own = (bnb.nn.Linear4bit if kind == "nf4" else bnb.nn.Linear8bitLt).forward
    grad_out = torch.randn(8, 32)
    answers = []
    for forward in (type(quantized).forward, own):
        x = torch.randn(8, 64, generator=torch.Generator().manual_seed(1)).requires_grad_()
        out = forward(quantized, x)
        out.backward(grad_out)
        answers.append((out.detach(), x.grad))
    (studio_out, studio_grad), (bnb_out, bnb_grad) = answers
    assert torch.allclose(studio_out, bnb_out, atol=1e-5)
    assert torch.allclose(studio_grad, bnb_grad, atol=1e-4, rtol=1e-3)
    assert studio_grad.abs().sum() > 0
