"""SD3's all-in-one single file (studio.families.sd3.checkpoint): diffusers' own converter reads Studio's MMDiT
names back tensor for tensor, and ComfyUI's/Forge's checkpoint rules load the real SD3.5 medium layout (meta
device) fully and refuse what they cannot build. The tiny export's reload by from_single_file (image difference 0)
is tests/test_flow_export.py's DreamBooth test."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from studio.errors import StudioError
from studio.export.consumers.sd3_checkpoint import CLIP_G, CLIP_L, T5_XXL, VAE_BLOCKS, sd3_checkpoint_verdict
from studio.families.sd3.checkpoint import diffusers_mmdit_state, mmdit_state, single_file_state

SD35_MEDIUM = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
               "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
               "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 384,
               "dual_attention_layers": tuple(range(13)), "qk_norm": "rms_norm"}  # as benchmarks/flow_arch.py


def test_diffusers_converter_reads_the_mmdit_names_back_exactly():
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    from studio.models.tiny_sd3 import tiny_sd3_transformer

    model = tiny_sd3_transformer()  # SD3.5-medium-like: a second attention in block 0, QK norms
    state = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(i))
             for i, (k, v) in enumerate(model.state_dict().items())}  # distinct values: a wrong split or swap shows
    original = mmdit_state(state, model.config)
    assert "joint_blocks.1.context_block.adaLN_modulation.1.weight" in original and len(original) < len(state)
    theirs = convert_sd3_transformer_checkpoint_to_diffusers({f"model.diffusion_model.{k}": v for k, v in original.items()})
    assert theirs.keys() == state.keys() and all(torch.equal(theirs[k], state[k]) for k in state)
    ours = diffusers_mmdit_state(original, model.config)
    assert ours.keys() == state.keys() and all(torch.equal(ours[k], state[k]) for k in state)


@pytest.fixture(scope="module")
def sd35_shapes():
    """The real SD3.5 medium all-in-one file's names and shapes (every component on the meta device)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    clip_l, clip_g, t5 = CLIPTextConfig(**CLIP_L, projection_dim=768), CLIPTextConfig(**CLIP_G), T5Config(**T5_XXL)
    with torch.device("meta"):
        pipe = SimpleNamespace(
            transformer=SD3Transformer2DModel(**SD35_MEDIUM), text_encoder=CLIPTextModelWithProjection(clip_l),
            text_encoder_2=CLIPTextModelWithProjection(clip_g), text_encoder_3=T5EncoderModel(t5),
            vae=AutoencoderKL(block_out_channels=VAE_BLOCKS, latent_channels=16, layers_per_block=2,
                              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4))
    return {k: tuple(v.shape) for k, v in single_file_state(pipe).items()}


def test_comfyui_and_forge_rules_load_the_real_sd35_medium_file_fully(sd35_shapes):
    for consumer in ("ComfyUI", "Forge"):
        verdict = sd3_checkpoint_verdict(sd35_shapes, consumer)
        assert verdict["loads"] == "all", verdict
    assert verdict["components"] == ["CLIP-L", "CLIP-G", "T5-XXL", "VAE"]
    assert verdict["config"]["num_layers"] == 24 and verdict["config"]["dual_attention_layers"] == tuple(range(13))
    assert "text_encoders.clip_l.transformer.text_projection.weight" not in sd35_shapes  # SD3 pools CLIP-L unprojected


def test_comfyui_rules_catch_what_they_cannot_build(sd35_shapes):
    qkv = "model.diffusion_model.joint_blocks.3.x_block.attn.qkv.weight"
    unfused = {k: v for k, v in sd35_shapes.items() if k != qkv} | {qkv.replace("qkv", "to_q"): (1536, 1536)}
    assert sd3_checkpoint_verdict(unfused)["loads"] == "partial"
    no_t5_norm = {k: v for k, v in sd35_shapes.items() if k != "text_encoders.t5xxl.transformer.encoder.final_layer_norm.weight"}
    assert "T5-XXL: not detected" in sd3_checkpoint_verdict(no_t5_norm)["why"]  # T5 would be silently skipped
    bare = {k.removeprefix("model.diffusion_model."): v for k, v in sd35_shapes.items()}
    assert sd3_checkpoint_verdict(bare)["loads"] == "none"  # no model.diffusion_model. prefix: not found
    from studio.models.tiny_sd3 import tiny_sd3_transformer

    model = tiny_sd3_transformer()
    tiny = {f"model.diffusion_model.{k}": tuple(v.shape) for k, v in mmdit_state(model.state_dict(), model.config).items()}
    verdict = sd3_checkpoint_verdict(tiny)
    assert verdict["loads"] == "refused" and "64 · depth" in verdict["why"]


def test_a_clip_l_projection_sd3_has_no_place_for_is_refused_by_name():
    from studio.models.tiny_sd3 import tiny_sd3_text_encoders

    clip_l, _ = tiny_sd3_text_encoders()
    assert torch.equal(clip_l.text_projection.weight, torch.eye(clip_l.config.hidden_size))  # tiny-sd3 is faithful
    with torch.no_grad():
        clip_l.text_projection.weight.mul_(2)
    with pytest.raises(StudioError, match="text_projection is not the identity.*--format diffusers"):
        single_file_state(SimpleNamespace(transformer=torch.nn.Linear(1, 1), text_encoder=clip_l))
