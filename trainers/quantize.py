"""Quantized frozen base (QLoRA): the denoiser's frozen Linear weights held in int8 or NF4 (bitsandbytes).

Setting ``base_quantization`` (none, int8, nf4, fp8), for LoRA and textual inversion. What changes and what does not:

- Every ``nn.Linear`` of the frozen denoiser becomes a bitsandbytes layer (``Linear8bitLt`` without
  fp16 weights, or ``Linear4bit`` with NF4 codes and double-quantized absmax; Studio's subclasses in
  ``trainers/bitsandbytes_layers.py`` answer in the autocast dtype and keep checkpointing effective), or for fp8 a
  :class:`trainers.fp8.Float8Linear` (torch's float8_e4m3fn, upcast one layer at a time), holding the
  same weights quantized. Inside a LoRA layer the quantized layer replaces peft's ``base_layer``; the adapter's
  ``lora_A``/``lora_B`` are untouched: fp32, trained by the same optimizer in fp32.
- Quantization happens after the caches are built and the encoders released, one layer at a time as
  it goes to the training device (``Trainer._setup``): the device never holds the full-precision
  denoiser, and the staged placement of ``trainers/placement.py`` is unchanged.
- Saved results hold only the adapter (or embedding rows), under the same names as an unquantized
  run: an ordinary adapter for the unquantized base (``tests/test_quantize.py`` compares the keys,
  shapes and dtypes of both).

Norms, embeddings, convolutions and biases stay in the frozen dtype (SD1.5's convolutions are two
thirds of its UNet: quantization saves less there than on the all-Linear Flux and SD3 transformers).
"""

from __future__ import annotations

import torch

from studio.errors import ConfigError
from trainers.bitsandbytes_layers import bitsandbytes_layers

KINDS = ("int8", "nf4", "fp8")


def check_quantization(config) -> None:
    """Refuse combinations this path does not support, naming the setting."""
    kind = getattr(config, "base_quantization", "none")
    if kind == "none":
        return
    if config.method not in ("lora", "textual_inversion"):
        raise ConfigError(f"base_quantization={kind} quantizes a frozen base: for method lora or textual_inversion, "
                          f"not {config.method} (set base_quantization=none).")
    if config.method == "lora" and config.adapter_type != "lora":
        raise ConfigError(f"base_quantization={kind} trains adapter_type lora only (DoRA, LoKr and LoHa read the base "
                          f"weight itself); set adapter_type=lora or base_quantization=none.")
    if config.torch_compile:
        raise ConfigError(f"base_quantization={kind} does not combine with torch_compile; set torch_compile=false.")
    if kind == "fp8" and not hasattr(torch, "float8_e4m3fn"):
        raise ConfigError(f"base_quantization=fp8 needs torch 2.1 or later (this is {torch.__version__}); "
                          "use base_quantization=nf4 or int8.")


def _quantized_linear(linear: torch.nn.Linear, kind: str, compute_dtype: torch.dtype, device: torch.device):
    if kind == "fp8":
        from trainers.fp8 import Float8Linear

        return Float8Linear(linear, compute_dtype).to(device)
    import bitsandbytes as bnb

    layers = bitsandbytes_layers()
    weight = linear.weight.data
    bias = linear.bias
    if kind == "nf4":
        layer = layers["nf4"](linear.in_features, linear.out_features, bias=bias is not None,
                                  compute_dtype=compute_dtype, quant_type="nf4", compress_statistics=True, device="meta")
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", compress_statistics=True)
        # bitsandbytes 0.50 repacks 4-bit weights for its CPU inference kernel in eval mode (samples), which fails on
        # layers narrower than one 64-value block (tiny models' time embedding); the plain 4-bit path serves them
        layer.support_avx512bf16_for_cpu = False
    else:
        layer = layers["int8"](linear.in_features, linear.out_features, bias=bias is not None,
                                    has_fp16_weights=False, device="meta")
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    if bias is not None:
        layer.bias = torch.nn.Parameter(bias.data, requires_grad=False)
    if kind == "int8" and weight.device.type != "cpu":
        # Int8Params quantizes only on a move from the CPU: a weight already on the accelerator would stay
        # in bf16 (measured: Flux's 22 GiB unchanged), so quantize it where it is
        layer.weight = layer.weight._quantize(device)
    return layer.to(device)  # bitsandbytes quantizes on the move (on the CPU too)


def _frozen_linears(module: torch.nn.Module):
    """(parent, attribute name, Linear) of every frozen nn.Linear, LoRA's own layers excluded."""
    for _, parent in list(module.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and not child.weight.requires_grad:
                yield parent, name, child


def quantize_module(module: torch.nn.Module, kind: str, *, compute_dtype: torch.dtype, device: torch.device) -> int:
    """Replace the frozen Linear layers of ``module`` by quantized ones on ``device``; returns how many."""
    if kind not in KINDS:
        raise ValueError(kind)
    count = 0
    for parent, name, linear in list(_frozen_linears(module)):
        setattr(parent, name, _quantized_linear(linear, kind, compute_dtype, device))
        count += 1
    module.to(device)  # the rest (norms, embeddings, LoRA tensors) as before; quantized tensors only move
    return count


def _compute_dtype(trainer) -> torch.dtype:
    from trainers.placement import frozen_dtype

    return frozen_dtype(trainer.config) if trainer.device.type == "cuda" else torch.float32


def quantize_frozen_base(trainer) -> None:
    """The trainer's hook: quantize its denoiser onto the training device when ``base_quantization`` asks."""
    kind = getattr(trainer.config, "base_quantization", "none")
    if kind == "none":
        return
    denoiser = trainer.components[trainer.family.denoiser_name]
    trainer.quantized_layers = quantize_module(denoiser, kind, compute_dtype=_compute_dtype(trainer), device=trainer.device)


def quantize_block(trainer, block: torch.nn.Module, kind: str) -> None:
    """Quantize one block on the training device (block swapping parks it on the CPU afterwards)."""
    count = quantize_module(block, kind, compute_dtype=_compute_dtype(trainer), device=trainer.device)
    trainer.quantized_layers = getattr(trainer, "quantized_layers", 0) + count


def is_quantized(module: torch.nn.Module) -> bool:
    import bitsandbytes as bnb

    from trainers.fp8 import Float8Linear

    return any(isinstance(m, bnb.nn.Linear4bit | bnb.nn.Linear8bitLt | Float8Linear) for m in module.modules())
