"""Export compatibility, part 1 (runs in CI): the consumers that do not install from the package index
(ComfyUI's engine, AUTOMATIC1111, Forge, kohya sd-scripts) checked by their key rules
(``studio.export.consumers``) against files written by our writers for the *real* SD1.5 and SDXL
layouts (modules on the meta device: names and shapes, no weights). Part 2, the consumers' own loading
code in side environments (diffusers 0.32 / 0.36 with transformers 4), is tests/test_export_compat_envs.py.
"""

from __future__ import annotations

import pytest
import torch

from studio.export.consumers import consumer_report, layout_of, match_all
from studio.export.lora_kohya import kohya_state_dict
from studio.export.lora_weights import LoraModule, LoraWeights, diffusers_lora_state
from studio.families.sd import StableDiffusionFamily
from studio.families.sdxl import StableDiffusionXLFamily

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
KEY_RULE_CONSUMERS = ("ComfyUI", "A1111", "Forge", "kohya sd-scripts")


def _meta_layout(kind: str):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from studio.models import real_arch

    with torch.device("meta"):
        if kind == "sd15":
            components = {"unet": UNet2DConditionModel(**real_arch.SD15_UNET),
                          "text_encoder": CLIPTextModel(CLIPTextConfig(**real_arch.CLIP_L14_TEXT))}
            family = StableDiffusionFamily()
        else:
            components = {"unet": UNet2DConditionModel(**real_arch.SDXL_UNET),
                          "text_encoder": CLIPTextModel(CLIPTextConfig(**real_arch.CLIP_L14_TEXT)),
                          "text_encoder_2": CLIPTextModelWithProjection(
                              CLIPTextConfig(**real_arch.OPENCLIP_BIGG14_TEXT))}
            family = StableDiffusionXLFamily()
    shapes = {(c, p): tuple(m.weight.shape) for c, model in components.items()
              for p, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    return layout_of(components, family), shapes


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def real(request):
    layout, shapes = _meta_layout(request.param)
    return request.param, layout, shapes


def _module(component: str, path: str, shape: tuple, rank: int, alpha: float, seed: int,
            real_shapes: bool = False) -> LoraModule:
    """Real factor shapes for strength checks; otherwise 1-element placeholders (key rules read names only)."""
    if not real_shapes:
        return LoraModule(component, path, torch.ones(rank, 1), torch.ones(1, rank), alpha)
    generator = torch.Generator().manual_seed(seed)
    down_shape = (rank, *shape[1:]) if len(shape) == 4 else (rank, shape[1])
    up_shape = (shape[0], rank, 1, 1) if len(shape) == 4 else (shape[0], rank)
    return LoraModule(component, path, torch.randn(down_shape, generator=generator),
                      torch.randn(up_shape, generator=generator), alpha)


def _lora_run_weights(shapes, real_shapes: bool = False) -> LoraWeights:
    """A LoRA run's modules: UNet attention and text-encoder attention, rank 2, alpha 4 (scale 2)."""
    chosen = [(c, p) for (c, p) in shapes
              if (c == "unet" and p.endswith(ATTENTION) and ".attn" in p)
              or (c != "unet" and p.endswith(TEXT_ATTENTION))]
    return LoraWeights([_module(c, p, shapes[(c, p)], 2, 4.0, i, real_shapes) for i, (c, p) in enumerate(sorted(chosen))])


def _svd_weights(shapes) -> LoraWeights:
    """An SVD extraction's modules: every Linear and Conv2d of UNet and text encoders (rank 1, scale 1)."""
    return LoraWeights([_module(c, p, shape, 1, 1.0, i) for i, ((c, p), shape) in enumerate(sorted(shapes.items()))])


def _family(layout):
    return layout.family


def test_kohya_lora_loads_fully_at_its_strength_in_every_webui_consumer(real):
    name, layout, shapes = real
    weights = _lora_run_weights(shapes, real_shapes=name == "sd15")  # strength on SD1.5's real factors
    state = kohya_state_dict(weights, _family(layout), layout.unet_config)
    expected_modules = {"sd15": 16 * 2 * 4 + 12 * 4, "sdxl": 70 * 2 * 4 + 12 * 4 + 32 * 4}[name]
    assert len(weights.modules) == expected_modules
    for consumer, result in match_all(list(state), layout).items():
        report = consumer_report(result, weights, state if name == "sd15" else None)
        assert report["loads"] == "all", (consumer, report)
        assert report["modules_loaded"] == expected_modules and report.get("strength", "as trained") == "as trained"


def test_diffusers_lora_layout_is_what_each_consumer_says(real):
    """The diffusers file is for diffusers: ComfyUI reads its text encoders (text_model. root, no alpha
    needed as the scale is folded) and the UNet's non-attention layers, but only the attention-processor
    spelling of UNet attention keys; A1111 and sd-scripts match none of it. So it claims diffusers only."""
    name, layout, shapes = real
    weights = _lora_run_weights(shapes)
    state = diffusers_lora_state(weights, _family(layout))
    assert all(k.startswith(("unet.", "text_encoder.text_model.", "text_encoder_2.text_model.")) for k in state)
    results = match_all(list(state), layout)
    comfy = consumer_report(results["ComfyUI"], weights)
    text_modules = sum(1 for m in weights.modules if m.component != "unet")
    assert comfy["modules_loaded"] == text_modules
    assert all(left.startswith("unet.") and left.endswith(ATTENTION) for left in comfy["left_out"])
    assert consumer_report(results["A1111"], weights, state)["loads"] == "none"
    assert consumer_report(results["Forge"], weights, state)["loads"] == "refused"


def test_svd_kohya_lora_what_each_consumer_leaves_out(real):
    """Every Linear/Conv2d of the real architectures: ComfyUI and Forge load all of it, A1111 all but
    SDXL's text_projection, and sd-scripts drops exactly conv_in, conv_out, the time (and label) embedding
    MLPs and CLIP-G's text_projection — what the export report then measures."""
    name, layout, shapes = real
    weights = _svd_weights(shapes)
    state = kohya_state_dict(weights, _family(layout), layout.unet_config)
    reports = {c: consumer_report(r, weights) for c, r in match_all(list(state), layout).items()}
    assert reports["ComfyUI"]["loads"] == "all" and reports["Forge"]["loads"] == "all"
    sd_scripts_left = set(reports["kohya sd-scripts"]["left_out"])
    embeddings = {"unet.conv_in", "unet.conv_out", "unet.time_embedding.linear_1", "unet.time_embedding.linear_2"}
    if name == "sd15":
        assert reports["A1111"]["loads"] == "all"
        assert sd_scripts_left == embeddings
    else:
        assert reports["A1111"]["left_out"] == ["text_encoder_2.text_projection"]
        assert sd_scripts_left == embeddings | {"unet.add_embedding.linear_1", "unet.add_embedding.linear_2",
                                                "text_encoder_2.text_projection"}


def test_left_out_share_is_a_relative_frobenius_norm(real):
    name, layout, shapes = real
    weights = _svd_weights(shapes)
    state = kohya_state_dict(weights, _family(layout), layout.unet_config)
    generator = torch.Generator().manual_seed(0)
    norms = {key: float(torch.rand(1, generator=generator)) for key in weights.keyed()}
    total = sum(norms.values()) * 1.25  # a quarter more: what no LoRA layer can hold (biases, norms)
    result = match_all(list(state), layout)["kohya sd-scripts"]
    report = consumer_report(result, weights, None, norms, total)
    left = [tuple(x.split(".", 1)) for x in report["left_out"]]
    expected = (sum(norms[m] for m in left) / total) ** 0.5
    assert report["left_out_relative_norm"] == pytest.approx(expected, rel=1e-5) and 0 < expected < 1
