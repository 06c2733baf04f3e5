"""Flux's kohya/ComfyUI LoRA layout (BFL names, fused qkv and linear1), checked against diffusers' own
kohya-Flux reader at the real model's widths (the reader hard-codes them), on the meta device."""

from __future__ import annotations

import torch

from studio.export.lora_weights import LoraModule
from studio.families.flux import FluxFamily
from studio.families.flux.names import kohya_flux_state


def real_width_flux():
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):  # FLUX.1-dev's widths, one block of each kind
        return FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True)


def lora(component: str, path: str, model, rank: int = 2, alpha: float = 4.0, seed: int = 0) -> LoraModule:
    generator = torch.Generator().manual_seed(seed)
    layer = model.get_submodule(path) if model is not None else None
    inputs, outputs = (layer.in_features, layer.out_features) if layer is not None else (768, 768)
    return LoraModule(component, path, torch.randn(rank, inputs, generator=generator),
                      torch.randn(outputs, rank, generator=generator), alpha)


def test_diffusers_reads_the_layout_back_exactly():
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    model = real_width_flux()
    paths = ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.to_v",
             "transformer_blocks.0.attn.to_out.0", "transformer_blocks.0.attn.add_k_proj", "transformer_blocks.0.ff.net.2",
             "single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_v",
             "single_transformer_blocks.0.proj_out", "proj_out", "norm_out.linear"]
    modules = [lora("transformer", p, model, seed=i) for i, p in enumerate(paths)]
    modules.append(LoraModule("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj",
                              torch.randn(2, 768), torch.randn(768, 2), 2.0))
    family = FluxFamily()
    state = kohya_flux_state(modules, model.config, family.kohya_lora_name)
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in state
    assert "lora_unet_single_blocks_0_linear1.lora_up.weight" in state
    assert "lora_unet_final_layer_adaLN_modulation_1.lora_up.weight" in state
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha" in state
    # compare the updates on random probes (a full real-width delta is 12288 × 3072: too slow to form)
    probes = {m.path: torch.randn(m.down.shape[1], 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
              for m in modules if m.component == "transformer"}
    expected = {m.path: m.scale * m.up.double() @ (m.down.double() @ probes[m.path])
                for m in modules if m.component == "transformer"}
    converted = _convert_kohya_flux_lora_to_diffusers({k: v.clone() for k, v in state.items()})
    got = {}
    for key, down in converted.items():
        if not key.startswith("text_encoder.") and key.endswith(".lora_A.weight"):
            path = key.removeprefix("transformer.")[: -len(".lora_A.weight")]  # final-layer keys come unprefixed
            up = converted[key.replace("lora_A", "lora_B")].double()
            if up.abs().max() > 0:
                got[path] = up @ (down.double() @ probes[path]) if path in probes else up
    assert got.keys() == expected.keys()
    for path, value in expected.items():
        assert torch.allclose(got[path], value, atol=1e-4), path
    te = [k for k in converted if k.startswith("text_encoder.") and ".layers.0.self_attn." in k]
    assert te, "diffusers found no CLIP-L LoRA in the file"


def test_full_transformer_in_bfl_layout_reads_back_through_diffusers():
    """Studio's diffusers -> BFL conversion, read back by diffusers' own single-file converter. That
    converter splits a single block's linear1 at FLUX.1's widths (3072 ×3 + 12288 rows) whatever the
    model, so those members get FLUX.1's rows here and every other tensor the tiny model's shape."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from studio.families.flux.names import bfl_transformer_state
    from studio.models.tiny_flux import tiny_flux_transformer

    state = tiny_flux_transformer().state_dict()
    generator = torch.Generator().manual_seed(0)
    for key in list(state):
        if key.startswith("single_transformer_blocks.") and (".attn.to_" in key or ".proj_mlp." in key):
            rows = 12288 if ".proj_mlp." in key else 3072
            state[key] = torch.randn((rows, *state[key].shape[1:]), generator=generator)
    bfl = bfl_transformer_state(state)
    assert "double_blocks.0.img_attn.qkv.weight" in bfl and "single_blocks.0.linear1.bias" in bfl
    assert "double_blocks.0.img_attn.norm.query_norm.scale" in bfl and "final_layer.adaLN_modulation.1.weight" in bfl
    back = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[key], state[key]) for key in state)
