"""A textual-inversion run with 2 vectors on the flow families (tiny-flux, tiny-sd3): the CLIP encoders read both
placeholder tokens, T5 reads the placeholder once as typed, in training and at generation alike
(docs/model-families.md, "Textual-inversion placeholders"). The encoders' inputs are recorded by a hook on
every module call, so nothing in Studio's own code path is replaced."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from conftest import tiny_config

import trainers
from studio.families.placeholders import collapse_placeholders, expand_placeholders

BASES = {"flux": "tiny-flux", "sd3": "tiny-sd3"}
T5_TOKENIZER = {"flux": "tokenizer_2", "sd3": "tokenizer_3"}
TOKENS = {"<sks>": ["<sks>", "<sks>_1"]}


def test_expand_and_collapse_are_inverse_and_idempotent():
    typed = "a photo of <sks>, (<sks> toy) on <sks>_10"
    expanded = expand_placeholders(typed, TOKENS)
    assert expanded == "a photo of <sks> <sks>_1, (<sks> <sks>_1 toy) on <sks>_10"
    assert expand_placeholders(expanded, TOKENS) == expanded  # an expanded prompt stays as it is
    assert collapse_placeholders(expanded, TOKENS) == typed


@contextmanager
def encoder_inputs() -> Iterator[list[tuple[torch.nn.Module, torch.Tensor]]]:
    """(text encoder, its input ids) for every CLIP and T5 forward while the block runs."""
    seen: list[tuple[torch.nn.Module, torch.Tensor]] = []

    def record(module, args):
        if type(module).__name__ in ("T5EncoderModel", "CLIPTextModel", "CLIPTextModelWithProjection") and args:
            seen.append((module, args[0].detach().clone()))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


def _t5_texts(family: str, seen) -> list[str]:
    from transformers import AutoTokenizer

    from studio.models.builtin import builtin_path

    tokenizer = AutoTokenizer.from_pretrained(str(builtin_path(BASES[family]) / T5_TOKENIZER[family]))
    return [tokenizer.decode(row, skip_special_tokens=True) for module, ids in seen
            if type(module).__name__ == "T5EncoderModel" for row in ids.tolist()]


def _clip_reads_every_vector(seen, prompts_with_placeholder: int) -> None:
    """Each CLIP forward that carries the placeholder holds both of its rows' ids (the last two of the vocabulary)."""
    carrying = 0
    for module, ids in seen:
        if type(module).__name__ == "T5EncoderModel":
            continue
        rows = module.get_input_embeddings().num_embeddings
        new = [(ids == i).any(dim=1) for i in (rows - 2, rows - 1)]
        assert torch.equal(new[0], new[1]), "a CLIP prompt holds one vector of the placeholder without the other"
        carrying += int(new[0].sum())
    assert carrying >= prompts_with_placeholder


@pytest.fixture(scope="module", params=list(BASES))
def ti_run(request, sample_subject, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"ti2-{request.param}") / "run"
    with encoder_inputs() as seen:
        result = trainers.train(tiny_config("textual_inversion", base=BASES[request.param], steps=2, batch_size=1,
                                            num_vectors=2, validation=False), sample_subject, directory)
    assert result["placeholder_tokens"] == ["<sks>", "<sks>_1"]
    return request.param, directory, seen


def test_training_gives_clip_both_vectors_and_t5_the_placeholder_once(ti_run):
    family, _, seen = ti_run
    _clip_reads_every_vector(seen, 1)
    texts = _t5_texts(family, seen)
    assert any("sks>" in text for text in texts)  # T5 did read the training prompt with its placeholder
    assert not any("sks>_1" in text or text.count("sks>") > 1 for text in texts), texts


def test_generation_with_the_two_vector_run_reads_the_same(ti_run):
    from studio.generate import GenerationRequest, Generator

    family, directory, _ = ti_run
    request = GenerationRequest(prompt="a photo of <sks> toy", steps=2, width=64, height=64, seed=3)
    with encoder_inputs() as seen:
        result = Generator().generate(BASES[family], request, [str(directory)])
    assert len(result.images) == 1 and result.tokens == ["<sks>"]
    _clip_reads_every_vector(seen, 1)
    texts = [text for text in _t5_texts(family, seen) if "sks>" in text]
    assert texts and all(text.count("sks>") == 1 and "sks>_1" not in text for text in texts), texts
