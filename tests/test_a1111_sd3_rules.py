"""AUTOMATIC1111's SD3 LoRA rules (studio.export.consumers.a1111_sd3) and kohya sd-scripts' reading of Flux/SD3
LyCORIS files (flow_sd_scripts.sd_scripts_lycoris_report), on the real SD3 medium and SD3.5 medium layouts
(modules on the meta device) with real-shaped rank-1 factors."""

from __future__ import annotations

import pytest
import torch
from test_flow_consumer_rules import ATTENTION, SD35_MEDIUM, _clip_l_config, _kohya, _shapes, _weights, sd35  # noqa: F401

from studio.export.consumers.a1111_sd3 import A1111, a1111_sd3_lycoris_report, a1111_sd3_report, match
from studio.export.consumers.flow_rules import flow_consumers
from studio.export.consumers.flow_sd_scripts import sd_scripts_lycoris_report
from studio.export.consumers.layout import layout_of
from studio.export.lora_weights import diffusers_lora_state
from studio.families.sd3 import StableDiffusion3Family

# stabilityai/stable-diffusion-3-medium-diffusers' transformer: no QK norms, no second attention
SD3_MEDIUM = dict(SD35_MEDIUM, pos_embed_max_size=192, dual_attention_layers=(), qk_norm=None)


@pytest.fixture(scope="module")
def sd3_medium():
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModel

    clip_l = _clip_l_config()
    with torch.device("meta"):
        components = {"transformer": SD3Transformer2DModel(**SD3_MEDIUM), "text_encoder": CLIPTextModel(clip_l)}
    return layout_of(components, StableDiffusion3Family()), _shapes(components)


def _attention_and_clip(component, path):
    return (component == "transformer" and path.endswith(ATTENTION[:8])) or (
        component == "text_encoder" and path.endswith(("q_proj", "v_proj")) and ".layers.0." in path)


def _folded(state):
    """The kohya file with every scale folded into lora_up and no alpha tensors."""
    out = {}
    for key, value in state.items():
        if key.endswith(".lora_up.weight"):
            stem = key.removesuffix(".lora_up.weight")
            rank = state[f"{stem}.lora_down.weight"].shape[0]
            value = value * (float(state[f"{stem}.alpha"]) / rank)
        if not key.endswith(".alpha"):
            out[key] = value
    return out


def test_sd3_medium_kohya_file_is_refused_for_its_alpha_keys(sd3_medium):
    layout, shapes = sd3_medium
    weights = _weights(shapes, _attention_and_clip)
    state = _kohya(weights, layout)
    verdict = a1111_sd3_report(state, weights, layout)
    assert verdict["loads"] == "refused" and "ValueError" in verdict["refused"], verdict
    # without alpha tensors (scales folded) every transformer weight loads at its strength, on the whole fused
    # qkv; CLIP's lora_te1_ names have no SD3 spelling there and are dropped
    folded = _folded(state)
    verdict = a1111_sd3_report(folded, weights, layout)
    transformer = {k.split(".")[0] for k in folded if k.startswith("lora_unet_")}
    assert verdict["loads"] == "partial" and verdict["modules_loaded"] == len(transformer) == 24 * 4 - 1, verdict
    assert verdict["modules_in_file"] == len(transformer) + 2
    assert verdict["keys_dropped"] == 4 and all(k.startswith("lora_te1_") for k in verdict["dropped"])
    assert verdict["wrong"] and all(t.startswith("text_encoder:") for t in verdict["wrong"])  # only CLIP's, missing


def test_sd3_medium_rules_catch_a_wrong_strength(sd3_medium):
    layout, shapes = sd3_medium
    weights = _weights(shapes, lambda c, p: c == "transformer" and p.endswith(ATTENTION[:8]))
    folded = _folded(_kohya(weights, layout))
    assert a1111_sd3_report(folded, weights, layout)["loads"] == "all"
    key = "lora_unet_joint_blocks_3_x_block_attn_qkv.lora_up.weight"
    verdict = a1111_sd3_report(dict(folded, **{key: folded[key] * 2}), weights, layout)
    assert verdict["loads"] == "partial" and verdict["wrong"] == ["joint_blocks.3.x_block.attn.qkv"]


def test_sd3_medium_diffusers_file_loads_only_the_image_stream_attention(sd3_medium):
    """A1111's diffusers map: x_block q/k/v (all three together, on thirds of the fused qkv) and to_out.0; its
    context-stream entries are misspelled and never match."""
    layout, shapes = sd3_medium
    weights = _weights(shapes, lambda c, p: c == "transformer" and p.endswith(ATTENTION[:8]))
    state = diffusers_lora_state(weights, layout.family)
    verdict = a1111_sd3_report(state, weights, layout)
    assert verdict["loads"] == "partial"
    assert verdict["modules_loaded"] == 24 * 2, verdict  # x_block.attn.qkv and x_block.attn.proj per block
    assert all(".add_" in k or ".to_add_out." in k for k in verdict["dropped"])
    without_k = {k: v for k, v in state.items() if not k.startswith("transformer.transformer_blocks.0.attn.to_k.")}
    assert a1111_sd3_report(without_k, weights, layout)["modules_loaded"] == 24 * 2 - 1
    dropped = match(list(without_k), layout).dropped  # block 0's q and v are ignored without k
    assert {f"transformer.transformer_blocks.0.attn.to_{m}.lora_{t}.weight" for m in "qv" for t in "AB"} <= set(dropped)


def test_sd35_has_no_a1111_model(sd35):  # noqa: F811
    layout, shapes = sd35
    weights = _weights(shapes, _attention_and_clip)
    for state in (_kohya(weights, layout), diffusers_lora_state(weights, layout.family)):
        verdict = flow_consumers(state, weights, layout)[A1111]
        assert verdict["loads"] == "none" and "SD3.5" in verdict["why"], verdict


def test_lycoris_files_in_a1111_and_sd_scripts(sd3_medium, sd35):  # noqa: F811
    """A DoRA file (LoRA tensors plus dora_scale) and a LoHa file: A1111 refuses both on SD3 medium (single-dot
    keys) and has no SD3.5 model; sd-scripts' own module loads DoRA's LoRA part without the magnitude and no LoHa."""
    layout, shapes = sd3_medium
    weights = _weights(shapes, lambda c, p: c == "transformer" and p.endswith(ATTENTION[:4]))
    lora = _kohya(weights, layout)
    stems = sorted({k.split(".")[0] for k in lora})
    dora = lora | {f"{s}.dora_scale": torch.ones(lora[f"{s}.lora_up.weight"].shape[0], 1) for s in stems}
    loha = {}
    for s in stems:
        up, down = lora[f"{s}.lora_up.weight"], lora[f"{s}.lora_down.weight"]
        loha |= {f"{s}.hada_w1_a": up, f"{s}.hada_w1_b": down, f"{s}.hada_w2_a": up, f"{s}.hada_w2_b": down,
                 f"{s}.alpha": lora[f"{s}.alpha"]}
    for state in (dora, loha):
        verdict = a1111_sd3_lycoris_report(state, layout)
        assert verdict["loads"] == "refused" and "ValueError" in verdict["refused"]
        assert a1111_sd3_lycoris_report(state, sd35[0])["loads"] == "none"
    verdict = sd_scripts_lycoris_report(dora, layout)
    assert verdict["loads"] == "partial" and verdict["modules_loaded"] == len(stems) == 24 * 2, verdict
    assert verdict["keys_dropped"] == len(stems) and "dora_scale ignored" in verdict["strength"]
    verdict = sd_scripts_lycoris_report(loha, layout)
    assert verdict["loads"] == "none" and verdict["modules_loaded"] == 0 and verdict["keys_dropped"] == len(loha)
    assert sd_scripts_lycoris_report(lora, layout)["loads"] == "all"


def test_a1111_checkpoint_verdict_is_none_for_sd35_and_unclaimed_for_sd3_medium():
    from types import SimpleNamespace

    from studio.export.consumers.a1111_sd3 import a1111_sd3_checkpoint_verdict

    assert a1111_sd3_checkpoint_verdict(SimpleNamespace(**SD35_MEDIUM))["loads"] == "none"
    assert a1111_sd3_checkpoint_verdict(SimpleNamespace(**SD3_MEDIUM))["loads"] == "not checked"
