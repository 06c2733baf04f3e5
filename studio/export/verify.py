"""Proof that an exported file is what a consumer will load: tensors, then pixels.

Every check loads the file through the consumer's own loader into a *fresh* pipeline, then asks
two questions. Did every tensor in the file arrive (LoRA layers attached with the right factors
and scale, embedding rows, every weight of a full model)? And does an image at a fixed seed match
the studio's own image from the run? A "no" raises :class:`ExportVerificationError`.

Tolerance: images are compared as float32 arrays in [0, 1] (before 8-bit quantisation). On
float32 CPU a faithful export reproduces the studio's image bit for bit (measured difference 0):
the same weights meet the same kernels in the same order. ``IMAGE_TOLERANCE`` = 1e-3 leaves room
for a conversion that reorders float operations (a folded LoRA scale, a different BLAS path) —
those differ by ~1e-6 — while staying 4x below one 8-bit grey level (1/255 ~ 3.9e-3), the smallest
difference a saved PNG could show. A dropped LoRA layer or a wrong scale moves pixels by 1e-2 or
more and is caught twice: by the tensor checks and by the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from studio.errors import StudioError
from studio.export.lora_weights import COMPONENTS, LoraWeights, module_key
from studio.sampling import GUIDANCE

IMAGE_TOLERANCE = 1e-3
VERIFY_STEPS = 3
VERIFY_SEED = 0
VERIFY_MAX_RESOLUTION = 256


class ExportVerificationError(StudioError):
    """An exported file did not reload faithfully; nothing was written."""


@dataclass(frozen=True)
class RenderSpec:
    prompt: str
    height: int
    width: int
    steps: int = VERIFY_STEPS
    guidance: float = GUIDANCE
    seed: int = VERIFY_SEED


@torch.no_grad()
def render(pipe, spec: RenderSpec, prompt: str | None = None) -> np.ndarray:
    """One float32 image [H, W, 3] in [0, 1] at the spec's seed, on CPU in float32."""
    if pipe.device.type != "cpu" or pipe.dtype != torch.float32:
        pipe.to("cpu", torch.float32)
    pipe.set_progress_bar_config(disable=True)
    from studio.families import prompt_arguments

    result = pipe(
        **prompt_arguments(pipe, [prompt or spec.prompt]),
        height=spec.height,
        width=spec.width,
        num_inference_steps=spec.steps,
        guidance_scale=spec.guidance,
        generator=torch.Generator("cpu").manual_seed(spec.seed),
        output_type="np",
    )
    return np.asarray(result.images[0], dtype=np.float32)


def image_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def check_image(what: str, difference: float, tolerance: float = IMAGE_TOLERANCE) -> None:
    if not difference <= tolerance:
        raise ExportVerificationError(
            f"{what}: reloaded, it renders a different image than the studio (max abs pixel difference "
            f"{difference:.2e} > tolerance {tolerance:.0e}). The export was not written."
        )


def attached_lora(pipe, adapter_name: str) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, float]]:
    """Every LoRA layer of ``adapter_name`` that a loader attached: (component, path) -> (A, B, scale)."""
    layers = {}
    for component in COMPONENTS:  # every family's LoRA-carrying components
        model = getattr(pipe, component, None)
        if model is None:
            continue
        for path, module in model.named_modules():
            lora_a = getattr(module, "lora_A", None)
            if lora_a is None or adapter_name not in lora_a:
                continue
            layers[module_key(component, path.removeprefix("base_model.model."))] = (
                lora_a[adapter_name].weight.detach(),
                module.lora_B[adapter_name].weight.detach(),
                float(module.scaling[adapter_name]),
            )
    return layers


def check_lora_loaded(pipe, adapter_name: str, weights: LoraWeights, what: str) -> int:
    """Every module of ``weights`` attached, none extra, factors and scale equal. Returns the count."""
    attached = attached_lora(pipe, adapter_name)
    expected = weights.keyed()
    missing = sorted(set(expected) - set(attached))
    extra = sorted(set(attached) - set(expected))
    if missing or extra:
        raise ExportVerificationError(
            f"{what}: the loader attached {len(attached)} LoRA layers but the file has {len(expected)} modules "
            f"(not loaded: {[f'{c}.{p}' for c, p in missing[:3]]}; unexpected: {[f'{c}.{p}' for c, p in extra[:3]]})."
        )
    for key, module in expected.items():
        lora_a, lora_b, scale = attached[key]
        effective = scale * lora_b.flatten(1).double() @ lora_a.flatten(1).double()
        wanted = module.scale * module.up.flatten(1).double() @ module.down.flatten(1).double()
        if lora_a.shape != module.down.shape or not torch.allclose(effective, wanted, rtol=1e-5, atol=1e-7):
            raise ExportVerificationError(
                f"{what}: LoRA module {key[0]}.{key[1]} was loaded with different factors or scale "
                f"(loaded scale {scale}, file scale {module.scale})."
            )
    return len(expected)


def check_embeddings_loaded(pipe, tokens: list[str], rows: torch.Tensor, what: str, encoder: str = "text_encoder") -> int:
    """The placeholder tokens exist in ``encoder``'s tokenizer and their embedding rows equal the file's."""
    tokenizer = getattr(pipe, encoder.replace("text_encoder", "tokenizer"))
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if len(ids) != rows.shape[0] or tokenizer.unk_token_id in ids:
        raise ExportVerificationError(f"{what}: the loader added {len(ids)} tokens for {rows.shape[0]} vectors ({tokens}).")
    loaded = getattr(pipe, encoder).get_input_embeddings().weight[ids].detach().float()
    if not torch.equal(loaded, rows.float()):
        raise ExportVerificationError(f"{what}: the loaded embedding rows of {encoder} differ from the file's.")
    return int(rows.shape[0])


def check_same_weights(source, reloaded, components: tuple[str, ...], what: str) -> int:
    """Every parameter and buffer of each component reloaded with the source's value. Returns the count."""
    count = 0
    for name in components:
        expected = getattr(source, name).state_dict()
        got = getattr(reloaded, name).state_dict()
        missing = sorted(set(expected) - set(got))
        wrong = [
            key for key in expected
            if key in got and (got[key].is_meta or not torch.equal(got[key].reshape(expected[key].shape), expected[key]))
        ]
        if missing or wrong:
            raise ExportVerificationError(
                f"{what}: {name} reloaded with {len(missing)} tensors missing and {len(wrong)} different "
                f"(e.g. {(missing + wrong)[:3]})."
            )
        count += len(expected)
    return count
