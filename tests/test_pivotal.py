"""Pivotal tuning on tiny-sd: a LoRA and a new token trained together. The fixed-noise loss falls, only the
LoRA tensors and the token's rows change (the rows stop at embedding_stop_step), a resumed run ends where an
uninterrupted one does, and each export reloads into a fresh diffusers pipeline and gives the run's image."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config, train_until_cancelled
from safetensors.torch import load_file
from test_trainers_learn import loss_before_and_after

import trainers
from studio.adapters import apply_run_result, resolve_adapter
from studio.errors import ConfigError
from studio.models import load_base
from trainers.checkpoints import checkpoint_dirs, load_checkpoint

STOP = 10
SETTINGS = {"steps": 30, "embedding_stop_step": STOP, "checkpoint_every": STOP, "checkpoints_to_keep": 5,
            "learning_rate": 2e-3, "embedding_learning_rate": 2e-2, "validation": False}


@pytest.fixture(scope="module")
def pivotal_run(sample_subject, tmp_path_factory):
    directory = tmp_path_factory.mktemp("pivotal") / "run"
    trainers.train(tiny_config("pivotal", **SETTINGS), sample_subject, directory)
    return directory


def _row_key(state: dict[str, torch.Tensor]) -> str:
    (key,) = [k for k in state if k.startswith("text_encoder.") and k.endswith("token_embedding.new_rows")]
    return key


def _rows(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return state[_row_key(state)]


def test_fixed_noise_loss_drops(pivotal_run):
    before, after = loss_before_and_after(pivotal_run)
    assert after < before * 0.95, f"pivotal: fixed-noise loss {before:.4f} -> {after:.4f}"


def test_result_holds_the_lora_and_the_token(pivotal_run):
    result = json.loads((pivotal_run / "result.json").read_text())
    assert result["method"] == "pivotal" and result["token"] == result["placeholder_tokens"][0]
    assert {"pytorch_lora_weights.safetensors", "learned_embeds.safetensors"} <= set(result["files"])
    lora = load_file(str(pivotal_run / "adapter" / "pytorch_lora_weights.safetensors"))
    assert lora and all("lora" in key for key in lora), sorted(lora)[:3]
    assert not any(key.startswith("text_encoder") for key in lora)  # the text encoder learns through its token only
    embeds = load_file(str(pivotal_run / "adapter" / "learned_embeds.safetensors"))
    assert list(embeds) == [result["token"]]


def test_only_lora_and_token_rows_change_and_rows_stop(pivotal_run):
    """The base's weights (UNet, the text encoder's vocabulary) are bitwise the base's; the token's rows moved
    in the first STOP steps and not after; the LoRA moved after STOP too."""
    base = load_base("tiny-sd").pipeline
    pipe = apply_run_result(pivotal_run, json.loads((pivotal_run / "result.json").read_text()),
                            trainers.load_run_config(pivotal_run))
    live_unet = pipe.unet.state_dict()
    for name, tensor in base.unet.state_dict().items():
        wrapped = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(live_unet.get(name, live_unet.get(wrapped)), tensor), f"base weight {name} changed"
    vocabulary = base.text_encoder.get_input_embeddings().weight
    loaded = pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(loaded[: vocabulary.shape[0]], vocabulary)
    for name, tensor in base.text_encoder.state_dict().items():
        if "token_embedding" not in name:
            assert torch.equal(pipe.text_encoder.state_dict()[name], tensor), f"text-encoder weight {name} changed"

    states = [load_checkpoint(d).trainable for d in checkpoint_dirs(pivotal_run)]
    assert [int(d.name.split("-")[1]) for d in checkpoint_dirs(pivotal_run)] == [STOP, 2 * STOP]
    final = load_file(str(pivotal_run / "adapter" / "learned_embeds.safetensors"))
    token_rows = next(iter(final.values()))
    initializer = base.tokenizer("toy", add_special_tokens=False).input_ids
    start = vocabulary[initializer].float().mean(dim=0)
    assert not torch.allclose(_rows(states[0])[0], start), "the token's rows never trained"
    assert torch.equal(_rows(states[0]), _rows(states[1])) and torch.equal(_rows(states[1]), token_rows)
    trainable = set(states[0]) - {_row_key(states[0])}
    assert trainable and all("lora_A" in k or "lora_B" in k for k in trainable), sorted(trainable)[:3]
    assert any(not torch.equal(states[0][k], states[1][k]) for k in trainable), "the LoRA stopped with the token"


def test_resume_is_exact(sample_subject, tmp_path):
    """Interrupted at step 6 (before the rows stop at 9), resumed: the same LoRA and rows as a straight run."""
    settings = SETTINGS | {"steps": 12, "checkpoint_every": 6, "embedding_stop_step": 9, "batch_size": 1}
    straight = tmp_path / "straight"
    trainers.train(tiny_config("pivotal", **settings), sample_subject, straight)
    interrupted = tmp_path / "interrupted"

    train_until_cancelled(tiny_config("pivotal", **settings), sample_subject, interrupted, at_step=6)
    trainers.resume(interrupted)
    for name in ("pytorch_lora_weights.safetensors", "learned_embeds.safetensors"):
        expected = load_file(str(straight / "adapter" / name))
        resumed = load_file(str(interrupted / "adapter" / name))
        assert expected.keys() == resumed.keys()
        for key in expected:
            assert torch.allclose(expected[key], resumed[key], atol=1e-6, rtol=0), (name, key)


def test_run_directory_applies_lora_and_token(pivotal_run):
    """studio generate / the playground resolve a pivotal run to its LoRA with its token as companion."""
    source = resolve_adapter(pivotal_run)
    assert source.kind == "lora" and source.companion is not None
    assert source.companion.kind == "embedding" and source.companion.token == "<sks>"


def test_refuses_other_adapter_types(sample_subject, tmp_path):
    with pytest.raises(ConfigError, match="plain LoRA"):
        trainers.train(tiny_config("pivotal", adapter_type="lokr", steps=1), sample_subject, tmp_path / "run")


def render(pipe, prompt: str):
    import numpy as np

    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt, num_inference_steps=4, guidance_scale=5.0, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(3))
    return np.asarray(out.images[0])


@pytest.fixture(scope="module")
def pivotal_export(pivotal_run, tmp_path_factory):
    from studio.export import export_run

    return export_run(pivotal_run, "all", tmp_path_factory.mktemp("exports") / "pivotal")


def test_export_reloads_into_fresh_diffusers_pipelines(pivotal_run, pivotal_export):
    """Each layout's pair, loaded with diffusers' own loaders into a fresh tiny-sd pipeline, gives the run's image;
    the LoRA without its token does not."""
    from studio.runs import load_run, personalised_pipeline

    out = pivotal_export.out_dir
    run = load_run(pivotal_run)
    prompt = "a photo of <sks> toy on a beach"
    expected = render(personalised_pipeline(run), prompt)
    names = {item["path"] for item in pivotal_export.files}
    assert {"pytorch_lora_weights.safetensors", "learned_embeds.safetensors", "sks.safetensors"} <= names
    kohya = next(n for n in names if n.endswith("-pivotal.safetensors"))
    assert set(load_file(str(out / "sks.safetensors"))) == {"emb_params"}
    assert all(k.startswith("lora_unet_") or k.startswith("lora_te") for k in load_file(str(out / kohya)))

    pipe = load_base("tiny-sd").pipeline
    pipe.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    lora_only = render(pipe, prompt.replace("<sks>", "sks"))
    pipe.load_textual_inversion(str(out / "learned_embeds.safetensors"))
    assert abs(render(pipe, prompt) - expected).max() < 1e-4
    assert abs(lora_only - expected).max() > 1e-3, "the token made no difference: the test cannot tell"

    pipe = load_base("tiny-sd").pipeline  # the webui pair, as A1111/ComfyUI users get it
    pipe.load_lora_weights(str(out / kohya))
    pipe.load_textual_inversion(str(out / "sks.safetensors"), token="sks")
    assert abs(render(pipe, prompt.replace("<sks>", "sks")) - expected).max() < 1e-4


def test_generate_applies_the_export_folder_and_the_run(pivotal_run, pivotal_export):
    """`studio generate --adapter` with the run directory or the diffusers export folder: LoRA and token both."""
    from studio.generate import GenerationRequest, Generator

    generator = Generator("cpu")
    request = GenerationRequest(prompt="a photo of <sks> toy", steps=4, seed=1, width=64, height=64)
    from_run = generator.generate("tiny-sd", request, [str(pivotal_run)])
    assert resolve_adapter(pivotal_export.out_dir).companion is not None
    from_export = Generator("cpu").generate("tiny-sd", request, [str(pivotal_export.out_dir)])
    import numpy as np

    a, b = np.asarray(from_run.images[0], dtype=float), np.asarray(from_export.images[0], dtype=float)
    assert np.abs(a - b).max() <= 1
    plain = np.asarray(generator.generate("tiny-sd", request, []).images[0], dtype=float)
    assert np.abs(a - plain).max() > 1


def test_playground_applies_lora_and_token(pivotal_run):
    """The playground's personalised image uses both (it differs from the LoRA alone), and the base image gets
    the prompt without the token."""
    import numpy as np

    from studio.playground import Playground, Request, select_runs

    selection = select_runs([pivotal_run])
    assert selection.tokens == ["<sks>"]
    request = Request(prompt="a photo of <sks> toy", steps=4, seed=2, width=64, height=64)
    base, personalised = Playground("cpu").generate([pivotal_run], request)
    lora_only = _lora_only_image(pivotal_run, request)
    a = np.asarray(personalised, dtype=float)
    assert np.abs(a - np.asarray(base, dtype=float)).max() > 1
    assert np.abs(a - lora_only).max() > 1


def _lora_only_image(run_dir, request):  # the image of the run's LoRA file alone
    import numpy as np

    from studio.generate import GenerationRequest, Generator

    ask = GenerationRequest(prompt=request.prompt, steps=request.steps, seed=request.seed, width=64, height=64)
    made = Generator("cpu").generate("tiny-sd", ask, [str(run_dir / "adapter" / "pytorch_lora_weights.safetensors")])
    return np.asarray(made.images[0], dtype=float)


def test_evaluation_scores_the_run_with_lora_and_token(pivotal_run, tmp_path, tiny_data_dir):
    import shutil

    import numpy as np
    from PIL import Image

    from studio import runs
    from studio.evaluation import evaluate_run, validate_report

    directory = tmp_path / "run"
    shutil.copytree(pivotal_run, directory)
    report = evaluate_run(directory, prompts=["a {0} {1} on a beach"], images_per_prompt=1, class_images=0, seed=5,
                          steps=3, guidance=4.0, clip="tiny-clip", dino="tiny-dino")
    assert validate_report(report) == [] and report["method"] == "pivotal"
    roles = {i["role"]: i for i in report["images"]}
    assert roles["personalised"]["prompt"] == "a <sks> toy on a beach" and roles["base"]["prompt"] == "a toy on a beach"
    pictures = {role: np.asarray(Image.open(directory / "eval" / roles[role]["path"]), dtype=float)
                for role in ("personalised", "base")}
    assert np.abs(pictures["personalised"] - pictures["base"]).mean() > 1.0
    pipe = runs.personalised_pipeline(runs.load_run(directory))  # what evaluation renders with: both applied
    rows = next(iter(load_file(str(directory / "adapter" / "learned_embeds.safetensors")).values()))
    token_id = pipe.tokenizer.convert_tokens_to_ids("<sks>")
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[token_id], rows[0])
    assert any("lora_A" in name for name, _ in pipe.unet.named_parameters())


@pytest.mark.parametrize("name", ["pivotal", "tiny-pivotal"])
def test_recipes_load(name):
    from studio.config import load_config

    config = load_config(name)
    assert config.method == "pivotal" and 0 < config.embedding_stop_step < config.steps
    assert config.embedding_learning_rate > config.learning_rate


def test_multi_vector_token_exports_and_reloads(sample_subject, tmp_path):
    """Two vectors per token: `<sks>` expands to `<sks> <sks>_1` in both layouts; the exporter's own check (both
    files into a fresh pipeline, the image compared) passes for each pair."""
    from studio.export import export_run

    run = tmp_path / "run"
    trainers.train(tiny_config("pivotal", steps=6, num_vectors=2, embedding_stop_step=3, validation=False), sample_subject, run)
    out = export_run(run, "all", tmp_path / "export")
    embeds = load_file(str(out.out_dir / "learned_embeds.safetensors"))
    assert embeds["<sks>"].shape[0] == 2 and load_file(str(out.out_dir / "sks.safetensors"))["emb_params"].shape[0] == 2
    checked = [item for item in out.files if item["format"].startswith("LoRA")]
    assert len(checked) == 2 and all(item["max_abs_diff"] <= item["tolerance"] for item in checked)
    assert all("2 embedding vectors" in item["check"] for item in checked)


def test_a_checkpoint_is_viewed_as_a_pivotal_result(pivotal_run):
    """`--checkpoint 10` (eval, export): the checkpoint's LoRA and rows saved as the run saves its result."""
    from trainers.checkpoint_view import checkpoint_run

    view = checkpoint_run(pivotal_run, STOP)
    state = load_checkpoint(pivotal_run / "checkpoints" / f"step-{STOP:06d}").trainable
    rows = load_file(str(view / "adapter" / "learned_embeds.safetensors"))["<sks>"]
    assert torch.equal(rows, _rows(state))
    lora, final = (load_file(str(d / "adapter" / "pytorch_lora_weights.safetensors")) for d in (view, pivotal_run))
    assert lora.keys() == final.keys() and any(not torch.equal(lora[k], final[k]) for k in lora)
    assert json.loads((view / "result.json").read_text())["method"] == "pivotal"
