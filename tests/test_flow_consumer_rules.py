"""ComfyUI's and Forge's key rules for Flux and SD3 LoRA files (studio.export.consumers.flow_rules), checked
on the real FLUX.1-dev and SD3.5 medium layouts (modules on the meta device: names and shapes only) with
real-shaped rank-1 factors, so the update each tool would apply is compared on probes, not just the names."""

from __future__ import annotations

import pytest
import torch

from studio.export.consumers import layout_of
from studio.export.consumers.flow_rules import COMFYUI, FORGE, SD_SCRIPTS, consumer_report, flow_consumers
from studio.export.lora_weights import LoraModule, LoraWeights, diffusers_lora_state
from studio.families.flux import FluxFamily
from studio.families.sd3 import StableDiffusion3Family

FLUX_DEV = {"num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128, "num_attention_heads": 24,
            "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True}
SD35_MEDIUM = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
               "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
               "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 384,
               "dual_attention_layers": tuple(range(13)), "qk_norm": "rms_norm"}  # as benchmarks/flow_arch.py
ATTENTION = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
             "attn.add_v_proj", "attn.to_add_out", "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")


def _clip_l_config():
    # imported outside any meta-device block: a module imported inside one keeps meta tensors for good
    from transformers import CLIPTextConfig

    from studio.models import real_arch

    return CLIPTextConfig(**real_arch.CLIP_L14_TEXT)


@pytest.fixture(scope="module")
def flux():
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextModel

    clip_l = _clip_l_config()
    with torch.device("meta"):
        components = {"transformer": FluxTransformer2DModel(**FLUX_DEV), "text_encoder": CLIPTextModel(clip_l)}
    return layout_of(components, FluxFamily()), _shapes(components)


@pytest.fixture(scope="module")
def sd35():
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from studio.models import real_arch

    clip_l, clip_g = _clip_l_config(), CLIPTextConfig(**real_arch.OPENCLIP_BIGG14_TEXT)
    with torch.device("meta"):
        components = {"transformer": SD3Transformer2DModel(**SD35_MEDIUM), "text_encoder": CLIPTextModel(clip_l),
                      "text_encoder_2": CLIPTextModelWithProjection(clip_g)}
    return layout_of(components, StableDiffusion3Family()), _shapes(components)


def _shapes(components):
    return {(c, p): tuple(m.weight.shape) for c, model in components.items()
            for p, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _weights(shapes, pick) -> LoraWeights:
    """Rank-1 LoRA factors of the real shapes on the picked modules, alpha 2 (scale 2)."""
    modules = []
    for i, ((component, path), (out, inputs)) in enumerate(sorted(shapes.items())):
        if pick(component, path):
            generator = torch.Generator().manual_seed(i)
            modules.append(LoraModule(component, path, torch.randn(1, inputs, generator=generator),
                                      torch.randn(out, 1, generator=generator), 2.0))
    return LoraWeights(modules)


def _flux_lora(component, path):  # a Flux LoRA run's modules, the final modulation (swapped halves) too
    if component == "text_encoder":
        return path.endswith(("q_proj", "k_proj", "v_proj", "out_proj")) and ".layers.0." in path
    return path.endswith(ATTENTION) or path.endswith(("proj_mlp", "norm_out.linear")) or (
        path.startswith("single_transformer_blocks.") and path.endswith("proj_out"))


def _kohya(weights, layout):
    family = layout.family
    return family.kohya_state(weights.modules, layout.unet_config)


def test_flux_kohya_file_loads_fully_at_its_strength_in_comfyui_and_forge(flux):
    layout, shapes = flux
    weights = _weights(shapes, _flux_lora)
    state = _kohya(weights, layout)
    verdicts = flow_consumers(state, weights, layout)
    for name in (COMFYUI, FORGE):
        assert verdicts[name]["loads"] == "all", verdicts[name]
        assert verdicts[name]["strength"] == "as trained"
    assert verdicts[COMFYUI]["modules_loaded"] == verdicts[COMFYUI]["modules_in_file"] > 19 * 3 + 38 * 2
    assert verdicts["A1111"]["loads"] == "none" and "no Flux model" in verdicts["A1111"]["why"]
    # sd-scripts has no LoRA module on the final layer: it drops that (swapped) modulation, and says so
    sd_scripts = verdicts[SD_SCRIPTS]
    assert sd_scripts["loads"] == "partial" and sd_scripts["wrong"] == ["final_layer.adaLN_modulation.1"]
    assert sd_scripts["modules_loaded"] == sd_scripts["modules_in_file"] - 1


def test_flux_diffusers_file_is_sliced_into_the_fused_weights(flux):
    layout, shapes = flux
    weights = _weights(shapes, _flux_lora)
    state = diffusers_lora_state(weights, layout.family)
    assert "transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight" in state
    for name in (COMFYUI, FORGE):
        verdict = consumer_report(name, state, weights, layout)
        assert verdict["loads"] == "all", verdict
    assert consumer_report(SD_SCRIPTS, state, weights, layout)["loads"] == "none"  # kohya names only


def test_flux_rules_catch_wrong_strength_swap_and_names(flux):
    layout, shapes = flux
    weights = _weights(shapes, _flux_lora)
    state = _kohya(weights, layout)
    halved = dict(state, **{"lora_unet_double_blocks_3_img_attn_qkv.alpha": state["lora_unet_double_blocks_3_img_attn_qkv.alpha"] / 2})
    verdict = consumer_report(COMFYUI, halved, weights, layout)
    assert verdict["loads"] == "partial" and verdict["wrong"] == ["double_blocks.3.img_attn.qkv"]
    final = "lora_unet_final_layer_adaLN_modulation_1.lora_up.weight"
    unswapped = dict(state, **{final: torch.cat(state[final].chunk(2)[::-1])})
    assert consumer_report(COMFYUI, unswapped, weights, layout)["wrong"] == ["final_layer.adaLN_modulation.1"]
    # diffusers' module names under lora_unet_ (what a naive kohya writer emits) place nothing
    naive = {}
    for module in weights.by_component("transformer"):
        name = "lora_unet_" + module.path.replace(".", "_")
        naive |= {f"{name}.lora_down.weight": module.down, f"{name}.lora_up.weight": module.up}
    assert consumer_report(COMFYUI, naive, weights, layout)["loads"] == "none"
    assert consumer_report(FORGE, naive, weights, layout)["loads"] == "refused"


def test_sd35_diffusers_file_in_comfyui_and_forge(sd35):
    layout, shapes = sd35
    te = ("q_proj", "k_proj", "v_proj", "out_proj")
    plain = _weights(shapes, lambda c, p: (c == "transformer" and p.endswith(ATTENTION[:8]))
                     or (c != "transformer" and p.endswith(te) and ".layers.0." in p))
    state = diffusers_lora_state(plain, layout.family)
    comfy = consumer_report(COMFYUI, state, plain, layout)
    assert comfy["loads"] == "all", comfy
    assert consumer_report(FORGE, state, plain, layout)["loads"] == "refused"  # Forge's SD3 diffusers map is disabled
    # SD3.5 medium's second attention has no diffusers name in ComfyUI's map: partial, and said so
    dual = _weights(shapes, lambda c, p: c == "transformer" and p.endswith(ATTENTION))
    verdict = consumer_report(COMFYUI, diffusers_lora_state(dual, layout.family), dual, layout)
    assert verdict["loads"] == "partial"
    assert any(".attn2." in key for key in verdict["dropped"])


def test_sd35_kohya_file_loads_fully_in_comfyui_and_forge_and_reads_back(sd35):
    """SAI's MMDiT names with qkv fused, SD3.5 medium's second attention and the swapped last-block and final
    modulations included: both tools place every name on the whole fused weight, at the trained strength."""
    layout, shapes = sd35
    last = f"transformer_blocks.{SD35_MEDIUM['num_layers'] - 1}."
    weights = _weights(shapes, lambda c, p: (c == "transformer" and (p.endswith(ATTENTION) or p == "norm_out.linear"
                                                                      or p == last + "norm1_context.linear"))
                       or (c == "text_encoder_2" and p.endswith("q_proj") and ".layers.0." in p))
    state = _kohya(weights, layout)
    assert "lora_unet_joint_blocks_0_x_block_attn2_qkv.lora_down.weight" in state
    assert "lora_unet_joint_blocks_5_context_block_attn_qkv.lora_up.weight" in state
    assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.alpha" in state
    for name in (COMFYUI, FORGE, SD_SCRIPTS):
        verdict = consumer_report(name, state, weights, layout)
        assert verdict["loads"] == "all", verdict
    verdicts = flow_consumers(state, weights, layout)
    assert verdicts["A1111"]["loads"] == "none"  # A1111 runs SD3 medium only (studio.export.consumers.a1111_sd3)
    no_alpha = {k: v for k, v in state.items() if not k.endswith(".alpha")}
    assert consumer_report(SD_SCRIPTS, no_alpha, weights, layout)["loads"] == "refused"  # it reads one per module
    unswapped = dict(state)
    key = f"lora_unet_joint_blocks_{SD35_MEDIUM['num_layers'] - 1}_context_block_adaLN_modulation_1.lora_up.weight"
    unswapped[key] = torch.cat(state[key].chunk(2)[::-1])
    assert consumer_report(COMFYUI, unswapped, weights, layout)["loads"] == "partial"


def test_sd3_kohya_layout_reads_back_every_update_at_tiny_size():
    from studio.families.sd3.names import kohya_sd3_state, read_kohya_sd3_state
    from studio.models.tiny_sd3 import tiny_sd3_transformer

    model = tiny_sd3_transformer()
    paths = [p for p, m in model.named_modules() if isinstance(m, torch.nn.Linear) and p != "pos_embed.proj"]
    modules = []
    for i, path in enumerate(paths[::2]):  # every other module: fused groups with members missing too
        layer = model.get_submodule(path)
        generator = torch.Generator().manual_seed(i)
        modules.append(LoraModule("transformer", path, torch.randn(2, layer.in_features, generator=generator),
                                  torch.randn(layer.out_features, 2, generator=generator), 3.0))
    assert {"norm_out.linear", f"transformer_blocks.{model.config.num_layers - 1}.norm1_context.linear"} & {
        m.path for m in modules}  # a swapped modulation is among them
    family = StableDiffusion3Family()
    state = kohya_sd3_state(modules, model.config, family.kohya_lora_name)
    got = read_kohya_sd3_state(state, model.config)
    assert got.keys() == {m.path for m in modules}
    assert all(torch.allclose(got[m.path], m.delta().double(), atol=1e-5) for m in modules)
    # the same file as diffusers-named factors, for studio generate
    from types import SimpleNamespace

    from studio.families.sd3.names import diffusers_state_from_kohya

    factors = diffusers_state_from_kohya(state, SimpleNamespace(transformer=model), family)
    assert {k.removeprefix("transformer.").removesuffix(".lora_A.weight") for k in factors if ".lora_A." in k} == {
        m.path for m in modules}
    for m in modules:
        a, b = factors[f"transformer.{m.path}.lora_A.weight"], factors[f"transformer.{m.path}.lora_B.weight"]
        assert torch.allclose((b.flatten(1) @ a.flatten(1)).reshape(m.delta().shape), m.delta(), atol=1e-5), m.path
