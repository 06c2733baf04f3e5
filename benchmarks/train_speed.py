"""Training speed per method: the fast path against caches off, and against the bare network work.

For each method, in its own forked process, the real ``Trainer`` runs on tiny-sd (or, with
``--arch sd15``, on SD1.5's architecture with random weights) twice: with the fast path (the
defaults: latents and text embeddings cached, VAE and text encoder released) and with caches off
(``cache_latents=false, cache_text_embeddings=false``: VAE and text encoder run every step, as in
the reference scripts). Step times come from the trainer's own step events (everything the loop
does: data, noise, forward, backward, clipping, optimizer, events). Beside them, on the same
batch, models and optimizer:

- bare step: UNet forward + backward + optimizer step (textual inversion: text-encoder forward
  too, since its gradient flows through it) — the floor any trainer pays;
- the VAE encode and text-encoder forward a caches-off step adds.

Ratios use process CPU time, which other processes on a shared machine do not inflate.

    python -m benchmarks.train_speed                      # tiny-sd, all methods (~3 min on 2 cores)
    python -m benchmarks.train_speed --arch sd15 --methods lora --modes fast   # 512 px, real kernels
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks import common

METHOD_SETTINGS = {
    "lora": {"method": "lora", "lora_rank": 4, "lora_alpha": 4, "learning_rate": 1e-4},
    "dreambooth": {"method": "dreambooth", "learning_rate": 2e-6},
    "textual_inversion": {"method": "textual_inversion", "num_vectors": 2, "learning_rate": 5e-3},
}
ARCHS = {  # resolution, batch size, warm-up steps, timed steps
    "tiny-sd": (64, 2, 5, 40),
    "sd15": (512, 1, 1, 1),
}


def _per_step(marks: list, first: int, last: int) -> dict[str, float]:
    count = marks[last][0] - marks[first][0]
    span = marks[last][1].since(marks[first][1])
    return {key: value / count for key, value in span.items()}


def run_trainer(method: str, arch: str, fast: bool, work) -> tuple[Any, dict[str, Any]]:
    """Train ``warm-up + timed`` steps through ``Trainer.run``; per-step time and peak memory."""
    from studio.config import load_config
    from trainers import METHODS
    from trainers.base import Trainer, prepare_run_dir

    resolution, batch, warmup, steps = ARCHS[arch]
    config = load_config(None, {
        **METHOD_SETTINGS[method], "base": "tiny-sd" if arch == "tiny-sd" else "sd15-arch-random",
        "resolution": resolution, "batch_size": batch, "steps": warmup + steps, "sample_every": 0,
        "checkpoint_every": 0, "prior_preservation": False, "cache_latents": fast, "cache_text_embeddings": fast,
    })
    marks: list = []

    def listener(event: dict) -> None:
        if event["type"] == "started":
            common.reset_peak_rss()
            common.reset_gpu_peak()
        elif event["type"] == "step":
            timed = event["step"] in (warmup, warmup + steps)
            marks.append((event["step"], common.now() if timed else common.Clock(),
                          common.peak_rss_gb() if timed else None, common.gpu_peak_gb() if timed else None))

    base = None
    if arch == "sd15":
        from studio.models.real_arch import sd15_base

        base = sd15_base()
    run_dir = common.fresh_run_dir(work, f"speed-{arch}-{method}-{'fast' if fast else 'nocache'}")
    prepare_run_dir(config, common.subject(resolution), run_dir)
    trainer = Trainer(METHODS[method], config, run_dir, listener=listener, base=base)
    trainer.run()
    per_step = _per_step(marks, warmup - 1, warmup + steps - 1)
    return trainer, {
        "fast_path": fast, "step_wall_s": per_step["wall_s"], "step_cpu_s": per_step["cpu_s"],
        "steps_per_s": 1.0 / per_step["wall_s"], "peak_rss_gb": marks[-1][2], "gpu_max_allocated_gb": marks[-1][3],
        "released": list(getattr(trainer, "released", [])),
    }


def _timed(function, warmup: int, repeats: int) -> dict[str, float]:
    for _ in range(warmup):
        function()
    start = common.now()
    for _ in range(repeats):
        function()
    return {key: value / repeats for key, value in common.now().since(start).items()}


def bare_step(trainer, warmup: int, repeats: int) -> dict[str, float]:
    """UNet forward + backward + optimizer step on one fixed batch with the trainer's own models."""
    import torch

    config, family = trainer.config, trainer.family
    with torch.no_grad():
        indices = list(range(config.batch_size))
        latents = trainer.latents.latents([i % trainer.instance_count for i in indices], trainer.generator)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (len(indices),), device=latents.device)
        noisy = trainer.noise_scheduler.add_noise(latents, noise, timesteps)
    trains_text = trainer.method.text_encoder_trains()
    components = dict(trainer.components) | trainer.models
    ids = [t[[0] * len(indices)].to(trainer.device) for t in family.tokenize(components, trainer.prompts)]
    fixed = None if trains_text else trainer._embeddings(len(indices), 0)
    unet = trainer.unet_forward
    dtype = trainer.components["unet"].dtype

    def step() -> None:
        embedding = family.encode(components, ids) if trains_text else fixed
        prediction = unet(noisy.to(dtype), timesteps, **family.unet_kwargs(embedding.to(dtype=dtype), config.resolution)).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
        trainer.accelerator.backward(loss)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    return _timed(step, warmup, repeats)


def encoder_costs(trainer, warmup: int, repeats: int) -> dict[str, float]:
    """What a caches-off step adds: one VAE encode of the batch and one text-encoder forward."""
    import torch

    config = trainer.config
    images = trainer.latents.images[[i % trainer.instance_count for i in range(config.batch_size)]]
    ids = [t[[0] * config.batch_size].to(trainer.device) for t in trainer.family.tokenize(trainer.components, trainer.prompts)]
    with torch.no_grad():
        vae = _timed(lambda: trainer.latents._encode(images), warmup, repeats)
        if trainer.method.text_encoder_trains():  # runs every step on both paths
            text = {"wall_s": 0.0, "cpu_s": 0.0}
        else:
            text = _timed(lambda: trainer.family.encode(trainer.components, ids), warmup, repeats)
    return {"vae_encode_cpu_s": vae["cpu_s"], "vae_encode_wall_s": vae["wall_s"],
            "text_encoder_cpu_s": text["cpu_s"], "text_encoder_wall_s": text["wall_s"]}


def measure(method: str, arch: str, modes: tuple[str, ...]) -> dict[str, Any]:
    import gc

    work = common.setup_environment()
    _, _, warmup, steps = ARCHS[arch]
    result: dict[str, Any] = {"method": method, "arch": arch, "baseline_rss_gb": common.rss_gb()}
    for mode in modes:
        trainer, figures = run_trainer(method, arch, mode == "fast", work)
        if mode == "fast":
            figures["bare"] = bare_step(trainer, max(1, warmup // 2), steps)
        else:
            figures["encoders"] = encoder_costs(trainer, max(1, warmup // 2), steps)
        result[mode] = figures
        del trainer
        gc.collect()
    return result


def ratios(r: dict[str, Any]) -> dict[str, float | None]:
    fast, off = r.get("fast"), r.get("nocache")
    out: dict[str, float | None] = {"overhead": None, "caching_speedup": None, "caching_pays": None}
    if fast:
        out["overhead"] = fast["step_cpu_s"] / fast["bare"]["cpu_s"]
    if fast and off:
        out["caching_speedup"] = off["step_cpu_s"] / fast["step_cpu_s"]
        cost = off["encoders"]["vae_encode_cpu_s"] + off["encoders"]["text_encoder_cpu_s"]
        out["caching_pays"] = (off["step_cpu_s"] - fast["step_cpu_s"]) / cost if cost else None
    return out


def table(results: list[dict[str, Any]]) -> str:
    headers = ["method", "path", "steps/s (wall)", "step CPU ms", "bare UNet step CPU ms", "overhead ×bare",
               "VAE+TE fwd CPU ms", "saved by caching / VAE+TE cost", "peak RSS GB", "GPU max alloc GB"]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r.get("method"), "error", r["error"]] + [None] * 7)
            continue
        rat = ratios(r)
        for mode in ("fast", "nocache"):
            f = r.get(mode)
            if not f:
                continue
            enc = f.get("encoders")
            rows.append([
                r["method"], "fast path" if mode == "fast" else "caches off", f["steps_per_s"], 1e3 * f["step_cpu_s"],
                1e3 * f["bare"]["cpu_s"] if "bare" in f else None, rat["overhead"] if mode == "fast" else None,
                1e3 * (enc["vae_encode_cpu_s"] + enc["text_encoder_cpu_s"]) if enc else None,
                rat["caching_pays"] if mode == "nocache" else None, f["peak_rss_gb"], f["gpu_max_allocated_gb"],
            ])
    return common.markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="tiny-sd")
    parser.add_argument("--methods", nargs="*", choices=sorted(METHOD_SETTINGS), default=list(METHOD_SETTINGS))
    parser.add_argument("--modes", nargs="*", choices=("fast", "nocache"), default=["fast", "nocache"])
    parser.add_argument("--cap-gb", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--name", default=None, help="results file name (default: train_speed[_sd15])")
    args = parser.parse_args(argv)
    common.setup_environment()
    import diffusers  # noqa: F401  - imported once here, so children start at the full baseline
    import peft  # noqa: F401

    import trainers  # noqa: F401

    if args.arch == "tiny-sd":
        from studio.models import builtin_path

        builtin_path("tiny-sd")  # materialised once, outside the timed children
    results = []
    for method in args.methods:
        result = common.run_isolated(measure, (method, args.arch, tuple(args.modes)), cap_gb=args.cap_gb, timeout_s=args.timeout)
        result.setdefault("method", method)
        result["ratios"] = ratios(result) if "error" not in result else {}
        results.append(result)
        print(f"{method}: {result.get('error') or result['ratios']}", flush=True)
    resolution, batch, warmup, steps = ARCHS[args.arch]
    payload = {"benchmark": "train_speed", "machine": common.machine(), "arch": args.arch, "resolution": resolution,
               "batch_size": batch, "warmup_steps": warmup, "timed_steps": steps, "results": results}
    markdown = (f"## Training speed, {args.arch}, {resolution} px, batch {batch} ({steps} timed steps after {warmup} warm-up)\n\n"
                + table(results))
    common.write_results(args.name or ("train_speed" if args.arch == "tiny-sd" else f"train_speed_{args.arch}"), payload, markdown)
    print(markdown)
    return payload


if __name__ == "__main__":
    main()
