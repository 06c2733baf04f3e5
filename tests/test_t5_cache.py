"""The prompt-embedding disk cache (trainers/t5_cache.py): a second run reads the first run's embeddings
and never moves a text encoder to the device; the key changes with the encoders' dtype; a Flux run
caches T5 and CLIP-L embeddings."""

from __future__ import annotations

import torch
from conftest import tiny_config

from studio.models import load_base
from trainers import METHODS, t5_cache
from trainers.base import Trainer, prepare_run_dir


def _setup_trainer(subject, directory, **overrides) -> Trainer:
    config = tiny_config("lora", steps=1, **overrides)
    prepare_run_dir(config, subject, directory)
    trainer = Trainer(METHODS["lora"], config, directory)
    trainer._setup()
    return trainer


def test_second_run_reads_the_disk_cache(sample_subject, tmp_path, monkeypatch):
    first = _setup_trainer(sample_subject, tmp_path / "one")
    folder = t5_cache.cache_dir() / t5_cache.cache_key(first.base, first.family, "torch.float32")
    files = sorted(t5_cache.prompt_file(folder, prompt) for prompt in set(first.prompts))  # other tests share it
    assert files and all(path.is_file() for path in files)
    stamps = {path: path.stat().st_mtime_ns for path in files}
    fresh = first.family.encode_prompts(load_base("tiny-sd").pipeline.components, first.prompts)
    assert torch.allclose(first.cached_embeddings.hidden, fresh.hidden, atol=1e-5)

    calls = []
    original = first.family.__class__.encode_prompts
    monkeypatch.setattr(first.family.__class__, "encode_prompts", lambda *a, **k: calls.append(1) or original(*a, **k))
    second = _setup_trainer(sample_subject, tmp_path / "two")
    assert calls == [], "a cached prompt was encoded again"
    assert torch.equal(second.cached_embeddings.hidden, first.cached_embeddings.hidden)
    assert {path: path.stat().st_mtime_ns for path in files} == stamps  # read, not written again


def test_key_changes_with_dtype_and_family(tmp_path):
    base = load_base("tiny-sd")
    family = base.family
    assert t5_cache.cache_key(base, family, "torch.float32") != t5_cache.cache_key(base, family, "torch.bfloat16")
    flux = load_base("tiny-flux")
    assert t5_cache.cache_key(flux, flux.family, "torch.float32") != t5_cache.cache_key(base, family, "torch.float32")


def test_flux_run_caches_t5_embeddings(sample_subject, tmp_path):
    import json

    from safetensors.torch import load_file

    trainer = _setup_trainer(sample_subject, tmp_path / "flux", base="tiny-flux", train_text_encoder=False)
    assert "text_encoder_2" in trainer.family.text_encoder_names  # T5
    folders = [p for p in t5_cache.cache_dir().iterdir()
               if json.loads((p / "info.json").read_text())["family"] == type(trainer.family).__name__]
    assert len(folders) == 1
    cached = trainer.cached_embeddings
    for prompt in set(trainer.prompts):
        state = load_file(str(t5_cache.prompt_file(folders[0], prompt)))
        row = trainer.prompts.index(prompt)
        assert torch.equal(state["hidden"][0], cached.hidden[row]) and torch.equal(state["pooled"][0], cached.pooled[row])
