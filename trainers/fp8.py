"""fp8 storage of a frozen Linear layer: ``base_quantization: fp8``.

The weight is held as ``torch.float8_e4m3fn`` (1 byte per value; values scaled per output row into e4m3's
range, the scale kept in fp32) and upcast to the compute dtype only for the layer's own matmul, in the
forward and again in the backward, so the device never holds more than one layer's upcast weight and
autograd saves the 1-byte weight, not the upcast one. Pure torch: it works wherever torch has the dtype
(CPU included), without bitsandbytes.

The weight is a buffer, not a parameter: a frozen tensor either way, and diffusers' ``ModelMixin.dtype``
(the first floating-point parameter) keeps answering the compute dtype.
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448


class _Float8Matmul(torch.autograd.Function):
    """``x @ (weight * scale).T + bias`` with the weight upcast inside, saved in fp8."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                dtype: torch.dtype) -> torch.Tensor:
        ctx.save_for_backward(weight, scale)
        ctx.dtype = dtype
        full = weight.to(dtype).mul_(scale.to(dtype))  # one layer-sized copy, not two
        return torch.nn.functional.linear(x.to(dtype), full, None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, scale = ctx.saved_tensors
        full = weight.to(ctx.dtype).mul_(scale.to(ctx.dtype))
        return grad.to(ctx.dtype) @ full, None, None, None, None


class Float8Linear(torch.nn.Module):
    """A frozen ``nn.Linear`` whose weight is stored in fp8 and computed in ``compute_dtype``."""

    def __init__(self, linear: torch.nn.Linear, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = compute_dtype
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
        self.register_buffer("weight", (weight / scale).to(FP8))
        self.register_buffer("scale", scale)
        bias = linear.bias
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Under autocast the autocast dtype (the matmul inside is autocast's), else the input's dtype, as nn.Linear."""
        answer = _Float8Matmul.apply(x, self.weight, self.scale, self.bias, self.compute_dtype)
        return answer if torch.is_autocast_enabled(x.device.type) else answer.to(x.dtype)

    def _apply(self, fn, recurse: bool = True):
        """A cast of the whole model (``.to(torch.bfloat16)``) moves the stored weight and scale but keeps their dtypes."""
        weight, scale = self.weight, self.scale
        super()._apply(fn, recurse)
        self.weight, self.scale = weight.to(self.weight.device), scale.to(self.scale.device)
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 storage, compute {self.compute_dtype}"
