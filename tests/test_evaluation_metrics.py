"""Evaluation metrics, prompts and report schema: pure functions checked against hand computation."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from studio.evaluation.embedding import Embeddings
from studio.evaluation.errors import EvaluationError
from studio.evaluation.metrics import (
    DIV_METRIC,
    diversity,
    mean_pairwise_cosine,
    mean_within_cosine,
    paired_cosine,
)
from studio.evaluation.prompts import (
    build_prompts,
    dreambench_templates,
    is_live,
    read_prompt_file,
    strip_identifier,
)
from studio.evaluation.report import format_summary, new_report, validate_report
from studio.evaluation.scoring import per_group_scores, score_embeddings


def brute_all_pairs(a: torch.Tensor, b: torch.Tensor) -> float:
    values = [F.cosine_similarity(x.double(), y.double(), dim=0).item() for x in a for y in b]
    return sum(values) / len(values)


def test_identical_images_score_one_and_orthogonal_zero():
    x = torch.randn(1, 16)
    assert mean_pairwise_cosine(x, x) == pytest.approx(1.0, abs=1e-5)
    same = x.repeat(3, 1) * torch.tensor([[1.0], [2.0], [0.5]])  # scale does not matter
    assert mean_pairwise_cosine(same, x) == pytest.approx(1.0, abs=1e-5)
    e = torch.eye(4)
    assert mean_pairwise_cosine(e[:2], e[2:]) == pytest.approx(0.0, abs=1e-12)
    assert paired_cosine(e[:2], e[2:]).abs().max().item() == pytest.approx(0.0, abs=1e-12)


def test_all_pairs_mean_equals_double_loop():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 10, generator=gen), torch.randn(4, 10, generator=gen) + 0.3
    assert mean_pairwise_cosine(a, b) == pytest.approx(brute_all_pairs(a, b), abs=1e-10)
    expected = F.cosine_similarity(a.double(), b[[0, 1, 2, 3, 0, 1, 2]].double(), dim=1)
    assert torch.allclose(paired_cosine(a, b[[0, 1, 2, 3, 0, 1, 2]]), expected, atol=1e-12)


def test_diversity_is_mean_dissimilarity_over_same_prompt_pairs():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 6, generator=gen)
    groups = ["a", "a", "a", "b", "b", "c", "b"]
    pairs = [(i, j) for i in range(7) for j in range(i + 1, 7) if groups[i] == groups[j]]
    expected = sum(1 - F.cosine_similarity(x[i].double(), x[j].double(), dim=0).item() for i, j in pairs) / len(pairs)
    assert diversity(x, groups) == pytest.approx(expected, abs=1e-10)
    assert diversity(x[:1], ["a"]) is None
    assert diversity(x[0].repeat(3, 1), [0, 0, 0]) == pytest.approx(0.0, abs=1e-10)
    assert mean_within_cosine(x[:1]) is None
    within = [F.cosine_similarity(x[i].double(), x[j].double(), dim=0).item() for i in range(7) for j in range(i + 1, 7)]
    assert mean_within_cosine(x) == pytest.approx(sum(within) / len(within), abs=1e-10)


def test_score_embeddings_combines_metrics_and_per_prompt():
    gen = torch.Generator().manual_seed(2)
    generated = Embeddings(torch.randn(4, 8, generator=gen), torch.randn(4, 5, generator=gen))
    refs = Embeddings(torch.randn(3, 8, generator=gen), torch.randn(3, 5, generator=gen))
    texts = torch.randn(4, 8, generator=gen)
    classes = torch.randn(2, 5, generator=gen)
    groups = [0, 0, 1, 1]
    scores = score_embeddings(generated, refs, texts=texts, groups=groups, class_dino=classes)
    assert scores["clip_i"] == pytest.approx(brute_all_pairs(generated.clip, refs.clip), abs=1e-10)
    assert scores["dino"] == pytest.approx(brute_all_pairs(generated.dino, refs.dino), abs=1e-10)
    assert scores["pres"] == pytest.approx(brute_all_pairs(classes, refs.dino), abs=1e-10)
    assert scores["clip_t"] == pytest.approx(F.cosine_similarity(generated.clip, texts).double().mean().item(), abs=1e-6)
    assert scores["div"] == pytest.approx(diversity(generated.dino, groups))
    no_text = score_embeddings(generated, refs)
    assert no_text["clip_t"] is None and no_text["pres"] is None
    per = per_group_scores(generated, refs, groups, texts)
    assert list(per) == [0, 1] and set(per[0]) == {"clip_i", "clip_t", "dino", "div"}
    assert per[1]["clip_i"] == pytest.approx(brute_all_pairs(generated.clip[2:], refs.clip), abs=1e-10)


def test_identifier_is_removed_for_clip_t_and_the_base_model():
    assert strip_identifier("a sks dog in the snow", "sks") == "a dog in the snow"
    assert strip_identifier("a <sks> dog", "<sks>") == "a dog"
    assert strip_identifier("a sksx dog", "sks") == "a sksx dog"
    (prompt,) = build_prompts(["a {0} {1} in the snow"], "sks", "dog")
    assert (prompt.prompt, prompt.text) == ("a sks dog in the snow", "a dog in the snow")
    (plain,) = build_prompts(["a photo of sks dog"], "sks", "dog")
    assert plain.text == "a photo of dog"
    assert len(build_prompts(["a {0} {1}", "a {0} {1}"], "sks", "dog")) == 1


@pytest.mark.parametrize(
    ("noun", "live"),
    [("dog", True), ("cats", True), ("golden retriever", True), ("person", True), ("rubber duck", False),
     ("stuffed animal", False), ("teddy bear", False), ("backpack", False), ("toy", False)],
)
def test_live_or_object_prompt_list(noun, live):
    assert is_live(noun) is live
    templates = dreambench_templates(noun)
    assert len(templates) == 25
    assert ("a {0} {1} wearing a red hat" in templates) is live


def test_prompt_files(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps(["a {0} {1}", "a {0} {1} on the moon"]))
    (tmp_path / "p.txt").write_text("# comment\na {0} {1}\n\n  a red {0} {1}  \n")
    assert read_prompt_file(tmp_path / "p.json") == ["a {0} {1}", "a {0} {1} on the moon"]
    assert read_prompt_file(tmp_path / "p.txt") == ["a {0} {1}", "a red {0} {1}"]
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(EvaluationError, match="bad.json"):
        read_prompt_file(tmp_path / "bad.json")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(EvaluationError, match="no prompts"):
        read_prompt_file(tmp_path / "empty.txt")


def test_report_schema_checker():
    report = new_report("images") | {
        "scores": {"clip_i": 0.5, "clip_t": None, "dino": 0.4, "pres": None, "div": 0.1},
        "backbones": {}, "references": [], "images": [{"path": "a.png"}], "per_prompt": [],
        "counts": {}, "timing": {}, "notes": [],
    }
    assert validate_report(report) == []
    assert report["div_metric"] == DIV_METRIC and "LPIPS" in report["div_metric"]
    assert "identifier" in report["clip_t_text_rule"]
    summary = format_summary(report)
    assert "CLIP-I" in summary and "0.500" in summary and "LPIPS substitute" in summary
    broken = dict(report, scores={"clip_i": "high"}, kind="run")
    problems = validate_report(broken)
    assert any("scores.clip_i" in p for p in problems) and any("'settings'" in p for p in problems)
    assert not math.isnan(report["scores"]["clip_i"])
