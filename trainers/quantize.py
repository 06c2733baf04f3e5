"""Quantized frozen base (QLoRA): the denoiser's frozen Linear weights held in int8 or NF4 (bitsandbytes).

Setting ``base_quantization`` (none, int8, nf4, fp8), for LoRA and textual inversion. What changes and what does not:

- Every ``nn.Linear`` of the frozen denoiser becomes a bitsandbytes layer (``Linear8bitLt`` without
  fp16 weights, or ``Linear4bit`` with NF4 codes and double-quantized absmax), or for fp8 a
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

import copy
import functools

import torch

from studio.errors import ConfigError

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


class AnswersInAutocastDtype:
    """A quantized Linear that, under autocast, answers in the autocast dtype, as ``nn.Linear`` does.

    bitsandbytes' layers return their input's dtype. Under CUDA autocast the norms before most Linear
    layers of Flux and SD3 give fp32 (``layer_norm`` is on autocast's fp32 list), so a bitsandbytes layer
    answered fp32 where ``nn.Linear`` answers bf16, and from the first feed-forward on the residual stream
    (every block's checkpointed input and much of each recompute) was fp32: measured on the H200,
    FLUX.1-dev NF4 held 2.2 GiB more than its bf16 twin beyond the weights (``benchmarks/cpu_device_memory.py``
    reproduces it and shows it gone)."""

    @staticmethod
    def autocast_input(x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device) and x.is_floating_point():
            return x.to(torch.get_autocast_dtype(device))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.autocast_input(x))


def quant_state_tensors(state) -> list[torch.Tensor]:
    """The tensors of a bitsandbytes QuantState, in the order :func:`quant_state_with` takes them."""
    if state is None:
        return []
    tensors = [state.code, state.absmax]
    if state.nested:
        tensors += [state.offset, state.state2.absmax, state.state2.code]
    return tensors


def quant_state_with(state, move):
    """A copy of a bitsandbytes QuantState with each tensor passed through ``move`` (a new object: autograd may hold
    the old one)."""
    if state is None:
        return None
    moved = copy.copy(state)
    moved.code = move(state.code)
    moved.absmax = move(state.absmax)
    if state.nested:
        moved.offset = move(state.offset)
        moved.state2 = copy.copy(state.state2)
        moved.state2.absmax = move(state.state2.absmax)
        moved.state2.code = move(state.state2.code)
    return moved


class _Matmul4bit(torch.autograd.Function):
    """bitsandbytes' 4-bit matmul with the packed weight and its state saved through ``save_for_backward``.

    bitsandbytes keeps them as plain attributes of its autograd node, which gradient checkpointing cannot drop:
    each block's 4-bit weights stayed referenced from the forward until the backward, so with block swapping every
    swapped block's device copy stayed on the device (measured by the emulation: SD3.5 medium with 12 of 24 blocks
    swapped held 0.11 GiB less instead of 0.4). Saved tensors are what checkpointing drops and recomputes."""

    @staticmethod
    def forward(ctx, x, weight, bias, state, *state_tensors):
        import bitsandbytes as bnb

        ctx.state = quant_state_with(state, lambda _: None)
        ctx.save_for_backward(weight, *state_tensors)
        return bnb.matmul_4bit(x, weight, bias=bias, quant_state=state)

    @staticmethod
    def backward(ctx, grad):
        import bitsandbytes as bnb

        weight, *tensors = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            given = iter(tensors)
            state = quant_state_with(ctx.state, lambda _: next(given))
            grad_x = torch.matmul(grad, bnb.functional.dequantize_4bit(weight, state).to(grad.dtype))
        return grad_x, None, None, None, *(None for _ in tensors)


class _Matmul8bit(torch.autograd.Function):
    """bitsandbytes' int8 matmul with the int8 weight and its row scales saved through ``save_for_backward``.

    bitsandbytes' own node keeps the layer's *input* as a plain attribute (for a weight gradient a frozen base never
    needs), which gradient checkpointing cannot drop: every int8 layer's input stayed from the forward to the
    backward, as if nothing were checkpointed."""

    @staticmethod
    def forward(ctx, x, weight, scales, bias, state):
        import bitsandbytes as bnb

        ctx.save_for_backward(weight, scales)
        return bnb.matmul(x, weight, bias=bias, state=state)

    @staticmethod
    def backward(ctx, grad):
        weight, scales = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            full = weight.to(grad.dtype, copy=True).mul_(scales.unsqueeze(1).mul(1.0 / 127.0).to(grad.dtype))
            grad_x = torch.matmul(grad, full)
        return grad_x, None, None, None, None


@functools.cache
def _bitsandbytes_layers() -> dict[str, type]:
    import bitsandbytes as bnb
    from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

    class Linear4bit(AnswersInAutocastDtype, bnb.nn.Linear4bit):
        """NF4 codes (bitsandbytes), answering in the autocast dtype; the matmul's saved tensors are checkpointable."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.autocast_input(x)
            fix_4bit_weight_quant_state_from_module(self)
            state = self.weight.quant_state
            answer_dtype = x.dtype
            bias = None if self.bias is None else self.bias.to(self.compute_dtype)
            answer = _Matmul4bit.apply(x.to(self.compute_dtype), self.weight, bias, state, *quant_state_tensors(state))
            return answer.to(answer_dtype)

    class Linear8bitLt(AnswersInAutocastDtype, bnb.nn.Linear8bitLt):
        """int8 weights (bitsandbytes), answering in the autocast dtype; the matmul's saved tensors are checkpointable."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.autocast_input(x)
            self.state.is_training = self.training
            if self.weight.CB is not None:
                self.init_8bit_state()
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return _Matmul8bit.apply(x, self.state.CB, self.state.SCB, bias, self.state)

    return {"nf4": Linear4bit, "int8": Linear8bitLt}


def _quantized_linear(linear: torch.nn.Linear, kind: str, compute_dtype: torch.dtype, device: torch.device):
    if kind == "fp8":
        from trainers.fp8 import Float8Linear

        return Float8Linear(linear, compute_dtype).to(device)
    import bitsandbytes as bnb

    layers = _bitsandbytes_layers()
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
