"""Dry compute: every tensor of a training step is allocated for real, the heavy kernels are skipped.

Peak memory depends on which tensors exist at once (their shapes and dtypes), not on their values.
Under :class:`DryCompute` the convolutions, matrix products and attention kernels (forward and
backward) return zero-filled tensors of exactly the shape, dtype and strides the real kernel would
return (inferred with PyTorch's meta kernels); everything else (norms, activations, autograd's saved
tensors, gradient checkpointing's recomputation, the optimizer update, 8-bit quantisation) runs
for real; bitsandbytes' quantized GEMMs count as heavy kernels (their output is allocated). The zero fill touches every page, so RSS sees every byte.

Why: on a 2-core CPU one real SD1.5 training step at 512 px takes minutes in fp32, and hours in
bf16 (CPUs without native bf16 matmul run those kernels ~100x slower), while the memory question
is the same as on a GPU. What this misses: scratch memory the skipped kernels allocate and free
internally (oneDNN workspaces, attention tiles); ``memory.py --real`` measures a configuration with
the real kernels to check the difference.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

aten = torch.ops.aten


def _heavy_ops() -> set:
    names = [
        "convolution.default", "convolution_backward.default", "mm.default", "addmm.default", "bmm.default",
        "baddbmm.default", "_scaled_dot_product_flash_attention_for_cpu.default",
        "_scaled_dot_product_flash_attention_for_cpu_backward.default",
        "_scaled_dot_product_efficient_attention.default", "_scaled_dot_product_efficient_attention_backward.default",
        "_scaled_dot_product_flash_attention.default", "_scaled_dot_product_flash_attention_backward.default",
    ]
    ops = set()
    for name in names:
        packet, _, overload = name.partition(".")
        if hasattr(aten, packet):
            ops.add(getattr(getattr(aten, packet), overload))
    return ops


HEAVY_OPS = _heavy_ops()
# bitsandbytes' 4-bit and 8-bit GEMMs and 4-bit dequantization (each with a registered shape function), when loaded
BITSANDBYTES_OPS = ("gemm_4bit", "dequantize_4bit", "int8_scaled_mm", "int8_mixed_scaled_mm", "int8_linear_matmul",
                    "int8_mm_dequant")


def _loaded_custom_ops() -> set:
    import sys

    if "bitsandbytes" not in sys.modules:
        return set()
    namespace = torch.ops.bitsandbytes
    return {getattr(namespace, name).default for name in BITSANDBYTES_OPS if hasattr(namespace, name)}


def _to_meta(value):
    if isinstance(value, torch.Tensor):
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
    return value


class DryCompute(TorchDispatchMode):
    """Skip heavy kernels, keep every allocation. ``skipped`` counts the kernels not run."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0
        self.heavy = HEAVY_OPS | _loaded_custom_ops()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self.heavy:
            return func(*args, **kwargs)
        self.skipped += 1
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        shaped = func(*tree_map(_to_meta, args), **tree_map(_to_meta, kwargs))

        def materialise(value):
            if isinstance(value, torch.Tensor):
                return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=device).zero_()
            return value

        return tree_map(materialise, shaped)
