"""Run every benchmark one after another (never two heavy ones at once), then check the targets.

    python -m benchmarks.run_all                 # train_speed (tiny-sd), eval_speed, memory, targets
    python -m benchmarks.run_all --sd15-speed    # + LoRA step vs bare step on SD1.5 at 512 px, real kernels
    python -m benchmarks.run_all --real-memory lora-r4-gc   # + a memory configuration with real kernels

Each benchmark is its own ``python -m benchmarks.NAME`` process; its JSON and markdown land in
``benchmarks/results/``, and ``results/summary.md`` collects the tables with the time each took.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks import common


def run(module: str, *args: str) -> float:
    started = time.perf_counter()
    print(f"\n=== {module} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=common.ROOT, check=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip", nargs="*", default=[], choices=("train_speed", "eval_speed", "validation_cost", "memory"))
    parser.add_argument("--sd15-speed", action="store_true", help="also time LoRA on SD1.5 at 512 px with real kernels (slow on a CPU)")
    parser.add_argument("--real-memory", nargs="*", default=[], help="memory configurations to repeat with real kernels (slow on a CPU)")
    args = parser.parse_args(argv)
    common.setup_environment()
    took: dict[str, float] = {}
    names = ["train_speed"]
    for name in ("train_speed", "eval_speed", "validation_cost", "memory"):
        if name not in args.skip:
            took[name] = run(name)
    if args.sd15_speed:
        took["train_speed_sd15"] = run("train_speed", "--arch", "sd15", "--methods", "lora", "--modes", "fast")
        names.append("train_speed_sd15")
    if args.real_memory:
        took["memory_real"] = run("memory", "--compute", "real", "--name", "memory_real", "--only", *args.real_memory)
    run("targets")
    names += ["eval_speed", "validation_cost", "memory", "memory_real", "targets"]
    sections = [f"Total {sum(took.values()) / 60:.1f} min: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in took.items())]
    sections += [(common.RESULTS / f"{n}.md").read_text() for n in names if (common.RESULTS / f"{n}.md").exists()]
    from studio.atomic import write_text

    write_text(common.RESULTS / "summary.md", "# Benchmark summary\n\n" + "\n\n".join(sections))
    print(sections[0])


if __name__ == "__main__":
    main()
