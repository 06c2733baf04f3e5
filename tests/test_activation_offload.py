"""Activation offloading (offload_activations, trainers/activation_offload.py): the same step, and on an emulated
device (benchmarks/device_emulation.py) the checkpointed blocks' inputs leave device memory."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from conftest import tiny_config
from test_block_swap import _deeper_tiny_flux, _run, _step

from benchmarks.device_emulation import EmulatedOffload
from studio.errors import ConfigError
from studio.families.base import PromptEmbedding
from trainers.activation_offload import ActivationOffload, check_activation_offload


def test_offloaded_step_computes_the_same_loss_and_gradients():
    family, transformer = _deeper_tiny_flux()
    loss, grads = _step(family, transformer)
    transformer.enable_gradient_checkpointing(ActivationOffload(torch.device("cpu")).checkpoint)
    offloaded_loss, offloaded = _step(family, transformer)
    assert torch.equal(offloaded_loss, loss)
    assert grads.keys() == offloaded.keys() and all(torch.equal(grads[k], offloaded[k]) for k in grads)


def _large_step(family, transformer, size: int = 48) -> None:
    """A step on a large latent (``size``² tokens), so that activations, not tiny weights, make the peak."""
    generator = torch.Generator().manual_seed(0)
    config = transformer.config
    noisy = torch.randn(1, config.in_channels // 4, 2 * size, 2 * size, generator=generator)
    embedding = PromptEmbedding(torch.randn(1, 7, config.joint_attention_dim, generator=generator),
                                torch.randn(1, config.pooled_projection_dim, generator=generator))
    transformer.zero_grad(set_to_none=True)
    family.predict(transformer, noisy, torch.tensor([500.0]), embedding, 16 * size).pow(2).mean().backward()


def test_checkpointed_inputs_leave_device_memory():
    """Each block's hidden states (tokens x width) leave the device between the forward and the block's recompute:
    the peak falls by at least all but two blocks' worth."""
    from benchmarks.device_emulation import second_step_peak

    peaks = {}
    for offload in (False, True):
        family, transformer = _deeper_tiny_flux()
        if offload:
            transformer.enable_gradient_checkpointing(EmulatedOffload(torch.device("cpu")).checkpoint)
        peaks[offload] = second_step_peak(transformer, partial(_large_step, family, transformer))
    hidden_bytes = 48 * 48 * transformer.inner_dim * 4  # image tokens x width, fp32
    blocks = len(family.swappable_blocks(transformer))
    assert peaks[False] - peaks[True] >= (blocks - 2) * hidden_bytes, (peaks, hidden_bytes)


def test_run_with_offloading_trains_the_same_adapter(sample_subject, tmp_path):
    """The trainer wires the setting into the denoiser's checkpointing: the same losses and adapter as without."""
    _, plain_losses, plain = _run(sample_subject, tmp_path / "plain")
    trainer, losses, offloaded = _run(sample_subject, tmp_path / "offload", offload_activations=True)
    denoiser = trainer.components[trainer.family.denoiser_name]
    assert isinstance(getattr(denoiser._gradient_checkpointing_func, "__self__", None), ActivationOffload)
    assert losses == plain_losses and len(losses) == 6
    assert offloaded.keys() == plain.keys() and all(torch.equal(offloaded[k], plain[k]) for k in plain)


def test_offloading_needs_checkpointing():
    from webui.messages import browser_text

    with pytest.raises(ConfigError, match="gradient_checkpointing=true") as refused:
        check_activation_offload(tiny_config("lora", offload_activations=True, gradient_checkpointing=False))
    browser = browser_text(refused.value)  # the Train tab's wording: its controls, no flag syntax
    assert "tick 'Gradient checkpointing'" in browser and "untick 'Offload activations'" in browser and "=" not in browser
    check_activation_offload(tiny_config("lora", offload_activations=True, gradient_checkpointing=True))
