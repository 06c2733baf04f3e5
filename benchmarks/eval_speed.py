"""Evaluation speed: CLIP + DINO scoring with the real backbone architectures (random weights).

Uses the evaluation package's own code end to end: ``studio.evaluation.score_images`` with
``Backbone`` objects wrapping CLIP ViT-B/32 and DINO ViT-S/16 built in memory
(``studio.models.real_arch``), the package's explicit preprocessing, its batching and its
reference-embedding cache. Measures

- images/s per backbone and for both together (decode + preprocess + forward, batch 16);
- end-to-end ``score_images`` time for several numbers of reference (R) and generated (G) images,
  with a cold and a warm reference-embedding cache;
- the metric arithmetic alone for large R x G (all-pairs means are computed without the pairs).

    python -m benchmarks.eval_speed        # about 2 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path
from typing import Any

from benchmarks import common

GRID = [(4, 4), (4, 16), (16, 16), (4, 32)]
IMAGE_SIZE = 512


def backbones(device: str):
    """Embedder over CLIP ViT-B/32 and DINO ViT-S/16 architectures with random weights. A fresh
    fingerprint per run keeps earlier runs' cached reference embeddings from being reused."""
    import torch

    from studio.evaluation.backbones import Backbone
    from studio.evaluation.embedding import Embedder
    from studio.evaluation.preprocessing import clip_transform, dino_transform
    from studio.models.real_arch import clip_b32_model, clip_tokenizer, dino_s16_model

    tag = uuid.uuid4().hex[:8]
    clip = Backbone("clip", "clip-vit-b32-arch-random", "memory", f"bench:{tag}:clip", clip_b32_model(device=device),
                    clip_transform(224), clip_tokenizer(), torch.device(device))
    dino = Backbone("dino", "dino-vits16-arch-random", "memory", f"bench:{tag}:dino", dino_s16_model(device=device),
                    dino_transform(224), None, torch.device(device))
    return Embedder(clip, dino)


def write_images(folder: Path, count: int, seed: int) -> list[Path]:
    """``count`` smooth synthetic 512 px PNGs (like generated images, unlike incompressible noise)."""
    import torch
    from PIL import Image

    from studio.models.synthetic import synthetic_images

    folder.mkdir(parents=True, exist_ok=True)
    pixels = synthetic_images(count, IMAGE_SIZE, torch.Generator().manual_seed(seed))
    paths = []
    for i, image in enumerate(pixels):
        array = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        path = folder / f"{i:03d}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def throughput(embedder, paths: list[Path]) -> dict[str, Any]:
    from studio.evaluation.preprocessing import load_image

    images = [load_image(p) for p in paths]
    embedder.embed_images(images[:4])  # warm-up
    out: dict[str, Any] = {"images": len(images)}
    start = common.now()
    decoded = [load_image(p) for p in paths]
    out["decode_s"] = common.now().since(start)["wall_s"]
    for name, backbone in (("clip", embedder.clip), ("dino", embedder.dino)):
        start = common.now()
        pixels = [backbone.transform.batch(images[i:i + embedder.batch_size]) for i in range(0, len(images), embedder.batch_size)]
        prep = common.now().since(start)
        start = common.now()
        for batch in pixels:
            backbone.embed_pixels(batch)
        forward = common.now().since(start)
        out[name] = {"preprocess_s": prep["wall_s"], "forward_s": forward["wall_s"], "forward_cpu_s": forward["cpu_s"],
                     "images_per_s": len(images) / (prep["wall_s"] + forward["wall_s"])}
    start = common.now()
    embedder.embed_images(decoded)
    both = common.now().since(start)
    out["both_images_per_s"] = len(images) / (both["wall_s"] + out["decode_s"])
    return out


def end_to_end(embedder, work: Path) -> list[dict[str, Any]]:
    from studio.evaluation import score_images

    rows = []
    references = write_images(work / "refs", max(r for r, _ in GRID), seed=1)
    generated = write_images(work / "gens", max(g for _, g in GRID), seed=2)
    prompts = {p.name: f"a photo of sks toy {['on a table', 'in a garden', 'on the beach', 'in snow'][i % 4]}"
               for i, p in enumerate(generated)}
    for refs, gens in GRID:
        for cache in ("cold", "warm"):
            if cache == "warm" and (refs, gens) != GRID[1]:
                continue
            start = common.now()
            report = score_images(generated[:gens], references[:refs], prompts=prompts, identifier="sks",
                                  clip=embedder.clip, dino=embedder.dino)
            took = common.now().since(start)
            rows.append({"references": refs, "generated": gens, "reference_cache": cache, "wall_s": took["wall_s"],
                         "cpu_s": took["cpu_s"], "images_per_s": (gens + (refs if cache == "cold" else 0)) / took["wall_s"],
                         "scores": report["scores"]})
        # the next grid point must not hit this one's cache: new fingerprints
        for backbone in (embedder.clip, embedder.dino):
            backbone.fingerprint = f"{backbone.fingerprint.split('#')[0]}#{uuid.uuid4().hex[:6]}"
    return rows


def metric_scaling() -> list[dict[str, Any]]:
    """The scoring arithmetic alone on random embeddings: it grows with R + G, not R x G."""
    import torch

    from studio.evaluation.embedding import Embeddings
    from studio.evaluation.scoring import score_embeddings

    rows = []
    for refs, gens in [(4, 100), (100, 1000), (1000, 10000)]:
        gen = Embeddings(torch.randn(gens, 512), torch.randn(gens, 384))
        ref = Embeddings(torch.randn(refs, 512), torch.randn(refs, 384))
        start = common.now()
        score_embeddings(gen, ref, texts=torch.randn(gens, 512), groups=[i % 25 for i in range(gens)], class_dino=torch.randn(gens, 384))
        rows.append({"references": refs, "generated": gens, "pairs": refs * gens, "ms": 1e3 * common.now().since(start)["wall_s"]})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32, help="images for the throughput measurement")
    args = parser.parse_args(argv)
    work = common.fresh_run_dir(common.setup_environment(), "eval-speed")
    embedder = backbones("cuda" if common.cuda_available() else "cpu")
    common.reset_peak_rss()
    rate = throughput(embedder, write_images(work / "throughput", args.images, seed=0))
    grid = end_to_end(embedder, work)
    scaling = metric_scaling()
    payload = {"benchmark": "eval_speed", "machine": common.machine(), "backbones": embedder.describe(),
               "throughput": rate, "end_to_end": grid, "metric_scaling": scaling,
               "peak_rss_gb": common.peak_rss_gb(), "gpu_max_allocated_gb": common.gpu_peak_gb()}
    md = [f"## Evaluation speed: CLIP ViT-B/32 + DINO ViT-S/16 architectures, {IMAGE_SIZE} px inputs, batch 16\n",
          common.markdown_table(
              ["backbone", "images/s (preprocess + forward)", "preprocess s", "forward s"],
              [[k, rate[k]["images_per_s"], rate[k]["preprocess_s"], rate[k]["forward_s"]] for k in ("clip", "dino")]
              + [["both (decode once, then both)", rate["both_images_per_s"], None, None]]),
          "\n### score_images end to end (CLIP-I, CLIP-T, DINO, DIV; 4 distinct prompts)\n",
          common.markdown_table(["references R", "generated G", "reference cache", "seconds", "images embedded / s"],
                                [[r["references"], r["generated"], r["reference_cache"], r["wall_s"], r["images_per_s"]] for r in grid]),
          "\n### Metric arithmetic alone (random embeddings)\n",
          common.markdown_table(["R", "G", "pairs", "ms"], [[r["references"], r["generated"], r["pairs"], r["ms"]] for r in scaling])]
    markdown = "\n".join(md)
    common.write_results("eval_speed", payload, markdown)
    print(markdown)
    return payload


if __name__ == "__main__":
    main()
