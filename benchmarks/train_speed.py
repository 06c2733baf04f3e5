"""Training speed per method: the fast path against caches off, and against the bare network work.

For each method, in its own forked process, the real ``Trainer`` runs on tiny-sd (or, with
``--arch sd15``, on SD1.5's architecture with random weights) twice: with the fast path (the
defaults: latents and text embeddings cached, VAE and text encoder released) and with caches off
(``cache_latents=false, cache_text_embeddings=false``: VAE and text encoder run every step, as in
the reference scripts). Trainer step times are taken between the trainer's own step events
(everything the loop does: data, noise, forward, backward, clipping, optimizer, events). Inside
the same run, interleaved with the trainer's steps (see ``Windows``), on a fixed batch with the
trainer's own models and optimizer:

- bare step: UNet forward + backward + optimizer step (textual inversion: text-encoder forward
  too, since its gradient flows through it) — the floor any trainer pays;
- the VAE encode and text-encoder forward a caches-off step adds;
- in the caches-off run, the trainer's own optimizer step twice over, alternating: as the run has
  it (caches off) and with the fast path's caches swapped in (``PairedCaching``). Their difference,
  measured side by side in one process, is what caching saves, without the drift between two
  separate runs; ÷ the CPU time the encoder calls took inside those same caches-off steps it is the
  *paired* "caching pays" ratio.

Ratios use process CPU time (on tiny-sd with one torch thread), which other processes on a shared
machine inflate far less than wall time; steps/s is wall time.

    python -m benchmarks.train_speed                      # tiny-sd, all methods (~2 min on 2 cores)
    python -m benchmarks.train_speed --arch sd15 --methods lora --modes fast   # 512 px, real kernels
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from benchmarks import common

METHOD_SETTINGS = {
    "lora": {"method": "lora", "lora_rank": 4, "lora_alpha": 4, "learning_rate": 1e-4},
    "dreambooth": {"method": "dreambooth", "learning_rate": 2e-6},
    "textual_inversion": {"method": "textual_inversion", "num_vectors": 2, "learning_rate": 5e-3},
}
ARCHS = {  # resolution, batch size, warm-up steps, timed steps, probe every N steps, probe repeats
    "tiny-sd": (64, 2, 5, 120, 4, 4),
    "sd15": (512, 1, 1, 2, 1, 1),
}


class Windows:
    """Trainer steps and reference work, interleaved *inside* the training run.

    At every ``every``-th step the step-event listener times ``repeats`` calls of each probe (bare
    step, encoder forwards); the trainer steps between two such blocks form one window. Each
    window gives a ratio (trainer step / bare step), and the median over windows is reported, so
    a machine shared with other work shifts both sides of each ratio alike.
    """

    def __init__(self, functions: dict, warmup: int, repeats: int):
        self.functions, self.warmup, self.repeats = functions, warmup, repeats
        self.blocks: list[dict[str, dict[str, float]]] = []  # per block: probe -> per-call time
        self.trainer: list[dict[str, float]] = []  # per window: trainer time per step
        self.left: tuple[common.Clock, int] | None = None  # (clock, step) when the last block ended

    def probe(self, step: int) -> None:
        arrived = common.now()
        if self.left is not None:
            clock, since = self.left
            self.trainer.append({k: v / (step - since) for k, v in arrived.since(clock).items()})
        block = {}
        for name, function in self.functions.items():
            for _ in range(self.warmup if not self.blocks else 0):
                function()
            start = common.now()
            for _ in range(self.repeats):
                function()
            block[name] = {k: v / self.repeats for k, v in common.now().since(start).items()}
        self.blocks.append(block)
        self.left = (common.now(), step)

    def close(self, step: int) -> None:
        clock, since = self.left
        self.trainer.append({k: v / (step - since) for k, v in common.now().since(clock).items()})

    def times(self, name: str, key: str = "cpu_s") -> list[float]:
        return [t[key] for t in self.trainer] if name == "trainer" else [b[name][key] for b in self.blocks]

    def ratio(self, numerator: str) -> dict[str, float]:
        """(trainer step or a probe) / bare step: the median of per-window ratios, and the ratio of the
        fastest window to the fastest block (interference only adds time, but minima of few samples
        scatter more from run to run)."""
        top, bare = self.times(numerator), self.times("bare")
        return {"min": min(top) / min(bare), "median": statistics.median(t / b for t, b in zip(top, bare, strict=True))}


def run_trainer(method: str, arch: str, fast: bool, work) -> dict[str, Any]:
    """Train ``warm-up + timed`` steps through ``Trainer.run``, probing between steps."""
    from studio.config import load_config
    from trainers import METHODS
    from trainers.base import Trainer, prepare_run_dir

    resolution, batch, warmup, steps, every, repeats = ARCHS[arch]
    config = load_config(None, {
        **METHOD_SETTINGS[method], "base": "tiny-sd" if arch == "tiny-sd" else "sd15-arch-random",
        "resolution": resolution, "batch_size": batch, "steps": warmup + steps, "sample_every": 0, "log_every": 1,
        "checkpoint_every": 0, "prior_preservation": False, "cache_latents": fast, "cache_text_embeddings": fast,
    })
    state: dict[str, Any] = {}

    def listener(event: dict) -> None:
        if event["type"] == "started":
            common.trim_heap()
            common.reset_peak_rss()
            common.reset_gpu_peak()
        elif event["type"] == "step" and event["step"] >= warmup:
            step = event["step"]
            if step == warmup + steps:
                state["windows"].close(step)
                state["peak"] = (common.peak_rss_gb(), common.gpu_peak_gb())
            elif (step - warmup) % every == 0:
                if "windows" not in state:
                    functions = {"bare": bare_step(trainer)} | ({} if fast else {"encoders": encoder_forwards(trainer)})
                    if not fast:
                        state["paired"] = PairedCaching(trainer)
                        functions["paired"] = state["paired"].pair
                    state["windows"] = Windows(functions, warmup // 2, repeats)
                state["windows"].probe(step)

    base = None
    if arch == "sd15":
        from studio.models.real_arch import sd15_base

        base = sd15_base()
    run_dir = common.fresh_run_dir(work, f"speed-{arch}-{method}-{'fast' if fast else 'nocache'}")
    prepare_run_dir(config, common.subject(resolution), run_dir)
    trainer = Trainer(METHODS[method], config, run_dir, listener=listener, base=base)
    trainer.run()
    windows: Windows = state["windows"]
    step_wall = statistics.median(windows.times("trainer", "wall_s"))
    figures = {
        "fast_path": fast, "windows": len(windows.trainer), "step_cpu_s": statistics.median(windows.times("trainer")),
        "step_wall_s": step_wall, "steps_per_s": 1.0 / step_wall, "bare_cpu_s": statistics.median(windows.times("bare")),
        "trainer_per_bare": windows.ratio("trainer"), "peak_rss_gb": state["peak"][0], "gpu_max_allocated_gb": state["peak"][1],
        "released": list(getattr(trainer, "released", [])),
    }
    if not fast:
        figures["encoders_cpu_s"] = statistics.median(windows.times("encoders"))
        figures["encoders_per_bare"] = windows.ratio("encoders")
        figures.update(state["paired"].figures(warmup // 2))
    return figures


class PairedCaching:
    """The trainer's own optimizer step, taken alternately as this caches-off run takes it and with the
    fast path's caches (latents and text embeddings encoded once) swapped in, on the same models.

    Each call of :meth:`pair` times one step of each kind (their order alternating from call to call)
    and, inside the caches-off step, the CPU time its VAE encode and text-encoder forward take, so
    "saved" and "what the encoders cost" come from the same steps."""

    def __init__(self, trainer):
        import torch

        from trainers.data import LatentSource

        self.trainer = trainer
        off = trainer.latents
        cached = LatentSource(off.vae, off.images, cache=True, random_flip=off.random_flip, device=off.device, dtype=off.dtype)
        embeddings = None
        if not trainer.method.text_encoder_trains():
            with torch.no_grad():
                embeddings = trainer.family.encode_prompts(trainer.components, trainer.prompts, trainer.device)
        self.variants = {"off": (off, None, {}), "fast": (cached, embeddings, {})}
        self.times: dict[str, list[float]] = {"off": [], "fast": [], "encoders": []}
        self.calls = 0
        self._timed_encoders(off, trainer.family)

    def _timed_encoders(self, latents, family) -> None:
        """Wrap the caches-off path's encoder calls (instance attributes shadow the methods) to add up their CPU time."""
        spent = self.spent = [0.0]

        def timed(function):
            def wrapper(*args, **kwargs):
                common.sync()
                start = time.process_time()
                out = function(*args, **kwargs)
                common.sync()
                spent[0] += time.process_time() - start
                return out

            return wrapper

        latents._encode = timed(latents._encode)
        if not self.trainer.method.text_encoder_trains():  # a training text encoder runs on both paths
            family.encode = timed(family.encode)

    def _step(self, variant: str) -> None:
        trainer = self.trainer
        saved = trainer.latents, trainer.cached_embeddings, trainer.step_inputs
        trainer.latents, trainer.cached_embeddings, trainer.step_inputs = self.variants[variant]
        self.spent[0] = 0.0
        common.sync()
        start = time.process_time()
        try:
            trainer._optimizer_step(trainer.step)
            common.sync()
        finally:
            trainer.latents, trainer.cached_embeddings, trainer.step_inputs = saved
        self.times[variant].append(time.process_time() - start)
        if variant == "off":
            self.times["encoders"].append(self.spent[0])

    def pair(self) -> None:
        self.calls += 1
        for variant in (("off", "fast") if self.calls % 2 else ("fast", "off")):
            self._step(variant)

    def figures(self, warmup: int) -> dict[str, float]:
        """Medians over the pairs after ``warmup`` calls."""
        med = {k: statistics.median(v[warmup:]) for k, v in self.times.items()}
        return {"paired_off_cpu_s": med["off"], "paired_fast_cpu_s": med["fast"], "paired_saved_cpu_s": med["off"] - med["fast"],
                "paired_encoders_in_step_cpu_s": med["encoders"], "paired_pairs": len(self.times["off"]) - warmup,
                "paired_saved_per_encoders": (med["off"] - med["fast"]) / med["encoders"],
                "paired_times_cpu_s": {k: v[warmup:] for k, v in self.times.items()}}


def bare_step(trainer):
    """UNet forward + backward + optimizer step on one fixed batch with the trainer's own models."""
    import torch

    config, family = trainer.config, trainer.family
    with torch.no_grad():
        indices = list(range(config.batch_size))
        latents = trainer.latents.latents([i % trainer.instance_count for i in indices], trainer.generator)
        noise = torch.randn_like(latents)
        timesteps = trainer.objective.sample_timesteps(len(indices), trainer.generator, latents.device,
                                                       image_tokens=family.image_tokens(*latents.shape[-2:]))
        noisy, target = trainer.objective.noised(latents, noise, timesteps)
    trains_text = trainer.method.text_encoder_trains()
    components = dict(trainer.components) | trainer.models
    ids = [t[[0] * len(indices)].to(trainer.device) for t in family.tokenize(components, trainer.prompts)]
    fixed = None if trains_text else trainer._embeddings(len(indices), 0)
    unet, dtype = trainer.unet_forward, trainer.unet_dtype

    def step() -> None:
        embedding = family.encode(components, ids) if trains_text else fixed
        prediction = family.predict(unet, noisy.to(dtype), timesteps, embedding.to(dtype=dtype), config.resolution)
        loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
        trainer.accelerator.backward(loss)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    return step


def encoder_forwards(trainer):
    """What a caches-off step adds over the fast path: a VAE encode of the batch and (when the text
    encoder is frozen) a text-encoder forward."""
    import torch

    config = trainer.config
    images = trainer.latents.images[[i % trainer.instance_count for i in range(config.batch_size)]]
    ids = [t[[0] * config.batch_size].to(trainer.device) for t in trainer.family.tokenize(trainer.components, trainer.prompts)]
    text = not trainer.method.text_encoder_trains()  # a training text encoder runs every step on both paths

    @torch.no_grad()
    def forwards() -> None:
        trainer.latents._encode(images)
        if text:
            trainer.family.encode(trainer.components, ids)

    return forwards


def measure(method: str, arch: str, modes: tuple[str, ...], threads: int) -> dict[str, Any]:
    import gc

    import torch

    if threads:
        torch.set_num_threads(threads)
    work = common.setup_environment()
    result: dict[str, Any] = {"method": method, "arch": arch, "baseline_rss_gb": common.rss_gb()}
    for mode in modes:
        result[mode] = run_trainer(method, arch, mode == "fast", work)
        gc.collect()
    return result


def ratios(r: dict[str, Any]) -> dict[str, float | None]:
    """overhead = trainer step / bare step; caching_speedup = caches-off step / fast step; caching_pays
    = time the fast path saves / what the VAE and text-encoder forwards cost (>= 1: it saves at least
    that). Each run's figures are in units of its own bare step, so drift between runs cancels. The
    medians over windows are the headline (stable from run to run on a shared machine); the ratios
    of the fastest windows are kept as ``*_min``. ``caching_pays_paired`` compares the two paths
    inside one run (see ``paired_steps``)."""
    fast, off = r.get("fast"), r.get("nocache")
    out: dict[str, float | None] = {"overhead": None, "caching_speedup": None, "caching_pays": None,
                                    "caching_pays_paired": off.get("paired_saved_per_encoders") if off else None}
    if fast:
        out["overhead"] = fast["trainer_per_bare"]["median"]
        out["overhead_min"] = fast["trainer_per_bare"]["min"]
    if fast and off:
        for suffix, key in (("", "median"), ("_min", "min")):
            fast_rel, off_rel = fast["trainer_per_bare"][key], off["trainer_per_bare"][key]
            out["caching_speedup" + suffix] = off_rel / fast_rel
            out["caching_pays" + suffix] = (off_rel - fast_rel) / off["encoders_per_bare"][key]
    return out


def _pair(a: float, b: float) -> str:
    return f"{a:.2f}; {b:.2f}"


def table(results: list[dict[str, Any]]) -> str:
    headers = ["method", "path", "steps/s (wall)", "step CPU ms", "bare UNet step CPU ms", "step / bare (median; fastest)",
               "VAE+TE fwd CPU ms", "saved by caching / VAE+TE cost (median; fastest)", "paired: saved ms; ÷ VAE+TE cost",
               "peak RSS GB", "GPU max alloc GB"]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r.get("method"), "error", r["error"]] + [None] * 8)
            continue
        for mode in ("fast", "nocache"):
            f = r.get(mode)
            if f:
                rows.append([
                    r["method"], "fast path" if mode == "fast" else "caches off", f["steps_per_s"], 1e3 * f["step_cpu_s"],
                    1e3 * f["bare_cpu_s"], _pair(f["trainer_per_bare"]["median"], f["trainer_per_bare"]["min"]),
                    1e3 * f["encoders_cpu_s"] if "encoders_cpu_s" in f else None,
                    _pair(r["ratios"]["caching_pays"], r["ratios"]["caching_pays_min"]) if mode == "nocache" else None,
                    _pair(1e3 * f["paired_saved_cpu_s"], f["paired_saved_per_encoders"]) if "paired_saved_cpu_s" in f else None,
                    f["peak_rss_gb"], f["gpu_max_allocated_gb"],
                ])
    return common.markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="tiny-sd")
    parser.add_argument("--methods", nargs="*", choices=sorted(METHOD_SETTINGS), default=list(METHOD_SETTINGS))
    parser.add_argument("--modes", nargs="*", choices=("fast", "nocache"), default=["fast", "nocache"])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: 1 on tiny-sd, where idle OpenMP threads spinning between tiny "
                             "kernels would count as CPU time; all on sd15)")
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
    threads = args.threads if args.threads is not None else (1 if args.arch == "tiny-sd" else 0)
    results = []
    for method in args.methods:
        result = common.run_isolated(measure, (method, args.arch, tuple(args.modes), threads), cap_gb=args.cap_gb, timeout_s=args.timeout)
        result.setdefault("method", method)
        result["ratios"] = ratios(result) if "error" not in result else {}
        results.append(result)
        print(f"{method}: {result.get('error') or result['ratios']}", flush=True)
    resolution, batch, warmup, steps, _, _ = ARCHS[args.arch]
    payload = {"benchmark": "train_speed", "machine": common.machine(), "arch": args.arch, "resolution": resolution,
               "batch_size": batch, "warmup_steps": warmup, "timed_steps": steps, "torch_threads": threads or "default",
               "results": results}
    markdown = (f"## Training speed, {args.arch}, {resolution} px, batch {batch} ({steps} timed steps after {warmup} warm-up)\n\n"
                + table(results))
    common.write_results(args.name or ("train_speed" if args.arch == "tiny-sd" else f"train_speed_{args.arch}"), payload, markdown)
    print(markdown)
    return payload


if __name__ == "__main__":
    main()
