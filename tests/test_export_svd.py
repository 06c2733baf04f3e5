"""SVD extraction of a LoRA from a DreamBooth fine-tune: exact at full rank, graceful below it."""

from __future__ import annotations

import copy

import pytest
import torch

from studio.export.svd_extract import extract_lora, low_rank_factors


def test_low_rank_factors_shapes_and_exactness():
    torch.manual_seed(0)
    conv = torch.randn(6, 3, 3, 3, dtype=torch.float64)
    down, up, error = low_rank_factors(conv, 100)
    assert down.shape == (6, 3, 3, 3) and up.shape == (6, 6, 1, 1)
    assert error == pytest.approx(0.0, abs=1e-20)
    assert torch.allclose((up.flatten(1) @ down.flatten(1)).reshape(conv.shape), conv, atol=1e-12)
    down, up, error = low_rank_factors(torch.randn(8, 5), 2)
    assert down.shape == (2, 5) and up.shape == (8, 2) and error > 0


@pytest.fixture(scope="module")
def models(tiny_dreambooth_run):
    from studio.models import load_base

    return load_base("tiny-sd").pipeline, load_base(str(tiny_dreambooth_run / "model")).pipeline


def _unet_output(unet) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, 32, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([100, 700]), encoder_hidden_states=context).sample


def _merged(base_unet, extraction, tuned_unet=None):
    """The base UNet plus the LoRA deltas (and, given ``tuned_unet``, its non-LoRA-able parameters)."""
    unet = copy.deepcopy(base_unet)
    with torch.no_grad():
        for module in extraction.weights.by_component("unet"):
            unet.get_submodule(module.path).weight += module.delta()
        if tuned_unet is not None:
            adapted = {f"{m.path}.weight" for m in extraction.weights.by_component("unet")}
            for name, param in tuned_unet.named_parameters():
                if name not in adapted:
                    unet.get_parameter(name).copy_(param)
    return unet


def test_full_rank_reproduces_the_fine_tune_and_error_shrinks_with_rank(models):
    base, tuned = models
    target = _unet_output(tuned.unet)
    base_error = (_unet_output(base.unet) - target).abs().max().item()
    assert base_error > 1e-3  # the fine-tune changed something to extract

    full = extract_lora(base.components, tuned.components, rank=1024)
    assert full.summary()["truncation_relative_error"] == pytest.approx(0.0, abs=1e-6)
    exact = _unet_output(_merged(base.unet, full, tuned.unet))
    assert (exact - target).abs().max().item() < 1e-4  # LoRA part exact; the rest is copied
    full_error = (_unet_output(_merged(base.unet, full)) - target).abs().max().item()
    assert full_error < 0.5 * base_error  # LoRA alone: only biases/norms are missing

    errors = []
    for rank in (1, 2, 4, 8, 16, 1024):
        extraction = extract_lora(base.components, tuned.components, rank=rank)
        errors.append((_unet_output(_merged(base.unet, extraction)) - target).abs().max().item())
        assert extraction.weights.ranks[-1] <= rank
    assert errors[-1] == pytest.approx(full_error, rel=1e-4, abs=1e-6)
    for lower, higher in zip(errors, errors[1:], strict=False):
        assert higher <= lower * 1.1 + 1e-6  # monotone-ish: more rank, no worse
    assert errors[0] > errors[-1]
