"""Base-model resolution: built-in tiny-sd, folders, single files, hub ids, pickle refusal."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from studio.cli import main as cli
from studio.errors import ModelLoadError, PickleRefusedError
from studio.models import builtin_path, builtins, load_base, load_tokenizers, materialize


def test_tiny_sd_is_sd1_architecture(tiny_data_dir):
    base = load_base("tiny-sd")
    pipe = base.pipeline
    assert type(pipe).__name__ == "StableDiffusionPipeline" and base.family.name == "sd1"
    assert type(pipe.unet).__name__ == "UNet2DConditionModel" and pipe.unet.config.cross_attention_dim == 32
    assert type(pipe.vae).__name__ == "AutoencoderKL" and pipe.vae_scale_factor == 8
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.prediction_type == "epsilon"


def test_tokenizer_is_real_clip_configured_like_sd(tiny_data_dir):
    (tokenizer,) = load_tokenizers("tiny-sd")
    assert tokenizer.model_max_length == 77 and tokenizer.pad_token == "<|endoftext|>"
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a dog").input_ids == [49406, 320, 1125, 539, 320, 1929, 49407]


def test_materialized_folder_loads_with_plain_diffusers(tiny_data_dir, tmp_path):
    target = tmp_path / "tiny-sd"
    assert cli(["models", "materialize", "tiny-sd", str(target)]) == 0
    assert (target / "model_index.json").exists() and not list(target.rglob("*.bin"))
    script = (
        "import sys, torch\n"
        "from diffusers import StableDiffusionPipeline\n"
        "pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1])\n"
        "image = pipe('a toy', num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]\n"
        "print(image.size)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("(64, 64)")


def test_folder_reference_matches_builtin(tiny_data_dir, tmp_path):
    folder = materialize("tiny-sd", tmp_path / "copy")
    a, b = load_base("tiny-sd").pipeline, load_base(str(folder)).pipeline
    for name, tensor in a.unet.state_dict().items():
        assert torch.equal(tensor, b.unet.state_dict()[name])
    image = b("a toy", num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_materialize_refuses_non_empty_folder(tiny_data_dir, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(ModelLoadError, match="not empty"):
        materialize("tiny-sd", tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_builtins_are_deterministic_and_listed(tiny_data_dir, capsys):
    assert "tiny-sd" in builtins()
    assert cli(["models", "list"]) == 0
    assert "tiny-sd" in capsys.readouterr().out
    assert builtin_path("tiny-sd") == builtin_path("tiny-sd")


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt"])
def test_pickle_files_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not really a pickle")
    with pytest.raises(PickleRefusedError, match="--allow-pickle"):
        load_base(str(path))


def test_hub_id_offline_names_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="tiny-sd"):
        load_base("someone/not-cached-model")


def test_bad_references(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_base(str(tmp_path))
    with pytest.raises(ModelLoadError, match="not a built-in"):
        load_base("no such model")
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"something.weight": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion checkpoint"):
        load_base(str(foreign))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 20)
    with pytest.raises(ModelLoadError, match="not a readable safetensors"):
        load_base(str(broken))
