"""Studio's bitsandbytes layers for a quantized frozen base (``trainers/quantize.py``): bitsandbytes' NF4 and int8
Linear layers with two changes a training step needs.

- Under autocast they answer in the autocast dtype, as ``nn.Linear`` does (:class:`AnswersInAutocastDtype`).
- Their matmuls save what the backward needs through ``save_for_backward``, which gradient checkpointing drops and
  recomputes; bitsandbytes' own autograd nodes keep it as plain attributes, which checkpointing cannot drop
  (:class:`_Matmul4bit`, :class:`_Matmul8bit`).

The quantization state helpers serve block swapping too (``trainers/block_swap.py``).
"""

from __future__ import annotations

import copy
import functools

import torch


class AnswersInAutocastDtype:
    """A quantized Linear that, under autocast, answers in the autocast dtype, as ``nn.Linear`` does.

    bitsandbytes' layers return their input's dtype. Under CUDA autocast the norms before most Linear
    layers of Flux and SD3 give fp32 (``layer_norm`` is on autocast's fp32 list), so a bitsandbytes layer
    answered fp32 where ``nn.Linear`` answers bf16, and from the first feed-forward on the residual stream
    (every block's checkpointed input and much of each recompute) was fp32: measured on the H200,
    FLUX.1-dev NF4 held 2.2 GiB more than its bf16 twin beyond the weights (``benchmarks/lowvram_memory.py
    --emulate`` reproduces it and shows it gone)."""

    @staticmethod
    def autocast_input(x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device) and x.is_floating_point():
            return x.to(torch.get_autocast_dtype(device))
        return x


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
def bitsandbytes_layers() -> dict[str, type]:
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
