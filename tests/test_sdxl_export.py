"""SDXL names in other tools' formats, each checked by loading the file with diffusers' own readers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from studio.export.lora_weights import read_diffusers_lora
from studio.families.sdxl.names import kohya_lora_name, sdxl_single_file_state, sgm_unet_name
from studio.lora_files import save_diffusers_lora
from studio.models import builtin_path, load_base

ENCODERS = ("text_encoder", "text_encoder_2")
SDXL_UNET = {  # the real SDXL base UNet's block layout
    "layers_per_block": 2,
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}


def test_sgm_and_kohya_names_of_the_real_layout():
    attn = "transformer_blocks.0.attn1.to_q"
    assert kohya_lora_name("unet", f"down_blocks.1.attentions.0.{attn}", SDXL_UNET) == (
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    )
    assert sgm_unet_name(f"down_blocks.2.attentions.1.{attn}", SDXL_UNET) == f"input_blocks.8.1.{attn}"
    assert sgm_unet_name(f"mid_block.attentions.0.{attn}", SDXL_UNET) == f"middle_block.1.{attn}"
    assert sgm_unet_name(f"up_blocks.1.attentions.2.{attn}", SDXL_UNET) == f"output_blocks.5.1.{attn}"
    assert sgm_unet_name("up_blocks.1.upsamplers.0.conv.weight", SDXL_UNET) == "output_blocks.5.2.conv.weight"
    assert sgm_unet_name("add_embedding.linear_2.bias", SDXL_UNET) == "label_emb.0.2.bias"
    assert kohya_lora_name("text_encoder", "encoder.layers.0.self_attn.q_proj", SDXL_UNET) == (
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    )
    assert kohya_lora_name("text_encoder_2", "text_model.encoder.layers.31.mlp.fc1", SDXL_UNET) == (
        "lora_te2_text_model_encoder_layers_31_mlp_fc1"
    )


@pytest.fixture(scope="module")
def diffusers_lora(tiny_data_dir, tmp_path_factory):
    """A LoRA on the UNet and both encoders of tiny-sdxl with random, non-zero up matrices."""
    from peft import LoraConfig

    base = load_base("tiny-sdxl")
    components = base.components
    unet_targets, encoder_targets = ["to_q", "to_k", "to_v", "to_out.0"], ["q_proj", "k_proj", "v_proj", "out_proj"]
    components["unet"].add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=unet_targets))
    for name in ENCODERS:
        components[name].add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=encoder_targets))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in ("unet", *ENCODERS):
            for pname, param in components[name].named_parameters():
                if "lora_B" in pname:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    directory = tmp_path_factory.mktemp("sdxl-lora")
    metadata = {"r": 4, "lora_alpha": 8}
    save_diffusers_lora(components, base.family, directory, unet_metadata=metadata | {"target_modules": unet_targets},
                        text_encoder_metadata=metadata | {"target_modules": encoder_targets})
    return directory


def fused_weights(directory, weight_name: str) -> dict[str, dict[str, torch.Tensor]]:
    pipe = load_base("tiny-sdxl").pipeline
    pipe.load_lora_weights(str(directory), weight_name=weight_name)
    pipe.fuse_lora(components=["unet", *ENCODERS])
    pipe.unload_lora_weights()
    return {name: {k: v.clone() for k, v in getattr(pipe, name).state_dict().items()} for name in ("unet", *ENCODERS)}


def test_kohya_sdxl_lora_loads_in_diffusers_like_the_original(diffusers_lora):
    weights = read_diffusers_lora(diffusers_lora / "pytorch_lora_weights.safetensors")
    assert {m.component for m in weights.modules} == {"unet", *ENCODERS}
    unet_config = json.loads((builtin_path("tiny-sdxl") / "unet" / "config.json").read_text())
    state = {}
    for module in weights.modules:
        name = kohya_lora_name(module.component, module.path, unet_config)
        state |= {f"{name}.lora_down.weight": module.down, f"{name}.lora_up.weight": module.up,
                  f"{name}.alpha": torch.tensor(module.alpha)}
    assert any(k.startswith("lora_unet_input_blocks_4_1_") for k in state)
    assert any(k.startswith("lora_unet_output_blocks_") for k in state)
    assert any(k.startswith("lora_unet_middle_block_1_") for k in state)
    assert any(k.startswith("lora_te1_text_model_") for k in state) and any(k.startswith("lora_te2_text_model_") for k in state)
    save_file(state, str(diffusers_lora / "kohya.safetensors"))
    expected = fused_weights(diffusers_lora, "pytorch_lora_weights.safetensors")
    loaded = fused_weights(diffusers_lora, "kohya.safetensors")
    base = load_base("tiny-sdxl").pipeline
    for component in ("unet", *ENCODERS):
        changed = [k for k, v in getattr(base, component).state_dict().items() if not torch.equal(v, expected[component][k])]
        assert changed, f"the LoRA did not reach {component}"
        for key, value in expected[component].items():
            torch.testing.assert_close(loaded[component][key], value, msg=f"{component}.{key}")


def test_single_file_sdxl_round_trips_through_load_base(tiny_data_dir, tmp_path):
    pipe = load_base("tiny-sdxl").pipeline
    state = sdxl_single_file_state(pipe)
    assert "model.diffusion_model.label_emb.0.0.weight" in state
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in state
    assert "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight" in state
    path = tmp_path / "tiny-sdxl.safetensors"
    save_file(state, str(path))
    loaded = load_base(str(path), single_file_config=str(builtin_path("tiny-sdxl")))
    assert loaded.family.name == "sdxl" and type(loaded.pipeline).__name__ == "StableDiffusionXLPipeline"
    for component in ("unet", "vae", *ENCODERS):
        original = getattr(pipe, component).state_dict()
        reloaded = getattr(loaded.pipeline, component).state_dict()
        for key, value in original.items():
            if key.endswith("position_ids"):
                continue
            assert torch.equal(reloaded[key], value), f"{component}.{key}"
