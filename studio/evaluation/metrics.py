"""The DreamBooth metrics as plain functions of embeddings: raw cosine similarities, 0-1 scale.

All-pairs means are computed without forming the pairs: the mean over every (a_i, b_j) of
cos(a_i, b_j) equals dot(mean_i â_i, mean_j b̂_j) for unit vectors â, b̂, so the cost grows with the
number of images, not the number of pairs. Everything is computed in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# What DIV means here. The paper uses LPIPS, whose backbone weights torchvision downloads at run
# time; an offline studio substitutes a DINO-based dissimilarity and says so in every report.
DIV_METRIC = "1 - DINO cosine between same-prompt images (LPIPS substitute)"


def normalize_rows(embeddings: torch.Tensor) -> torch.Tensor:
    """Unit-length rows (float64). A zero row stays zero rather than becoming NaN."""
    x = embeddings.detach().to(torch.float64).reshape(embeddings.shape[0], -1)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine over all len(a) x len(b) pairs: CLIP-I, DINO and PRES."""
    if len(a) == 0 or len(b) == 0:
        raise ValueError("both sets need at least one embedding")
    return float(normalize_rows(a).mean(0) @ normalize_rows(b).mean(0))


def paired_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of each row of ``a`` with the same row of ``b`` (float64 vector): CLIP-T per image."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"need as many rows in both ({a.shape[0]} vs {b.shape[0]})")
    return (normalize_rows(a) * normalize_rows(b)).sum(1)


def _within_sums(x: torch.Tensor) -> tuple[float, int]:
    """(sum of cosines over unordered distinct pairs, number of such pairs) within one set."""
    n = len(x)
    if n < 2:
        return 0.0, 0
    total = normalize_rows(x).sum(0)
    # |sum|^2 counts every ordered pair plus the n self-pairs (each 1).
    return (float(total @ total) - n) / 2.0, n * (n - 1) // 2


def mean_within_cosine(x: torch.Tensor) -> float | None:
    """Mean cosine over distinct pairs within one set; None with fewer than two embeddings."""
    sums, pairs = _within_sums(x)
    return sums / pairs if pairs else None


def diversity(embeddings: torch.Tensor, groups: Sequence[object]) -> float | None:
    """DIV substitute: mean of (1 - cosine) over all pairs of embeddings that share a group (prompt).

    Pairs are pooled across groups (each same-prompt pair counts once). None when no group
    has two images.
    """
    if len(groups) != len(embeddings):
        raise ValueError(f"{len(groups)} group labels for {len(embeddings)} embeddings")
    total, pairs = 0.0, 0
    for label in dict.fromkeys(groups):
        index = [i for i, g in enumerate(groups) if g == label]
        sums, count = _within_sums(embeddings[index])
        total, pairs = total + sums, pairs + count
    return 1.0 - total / pairs if pairs else None


def mean_or_none(values: torch.Tensor | Sequence[float]) -> float | None:
    values = torch.as_tensor(values, dtype=torch.float64)
    return float(values.mean()) if values.numel() else None
