"""Two Studio processes on one CPU: does concurrent work slow down gently?

Each configuration trains tiny-lora runs with ``studio train`` in separate processes and reads their
per-step time (the median of the trainer's own ``it_s`` past the warm-up):

- ``alone``: one run, the machine otherwise as it is;
- ``two, shared`` (Studio's policy, :mod:`studio.threads`): two runs at once, each with a fair share of
  the cores and sleeping OpenMP threads;
- ``two, unmanaged``: two runs at once, each with one thread per core and spinning OpenMP threads
  (``STUDIO_THREADS`` = cores, ``OMP_WAIT_POLICY=ACTIVE``), how torch behaves by default when two
  processes each think they own the machine.

Gentle means: two shared runs each take about twice the alone step time (the cores are split), and far
less than the unmanaged ones. Results: results/concurrency.{json,md}; docs/performance.md discusses them.

    python -m benchmarks.concurrency [--steps 80]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, machine, markdown_table, setup_environment, subject, write_results

CONFIGS = {
    "alone": {"processes": 1, "env": {}},
    "two, shared": {"processes": 2, "env": {}},
    "two, unmanaged": {"processes": 2, "env": {"STUDIO_THREADS": str(os.cpu_count() or 1), "OMP_WAIT_POLICY": "ACTIVE"}},
}


def step_seconds(run_dir: Path) -> float | None:
    from studio.run_events import steady_speed

    speed = steady_speed(run_dir)
    return 1.0 / speed if speed else None


def run_config(name: str, spec: dict, steps: int, subject_dir: Path, work: Path) -> dict:
    runs = [work / f"concurrency-{name.replace(', ', '-').replace(' ', '-')}-{i}" for i in range(spec["processes"])]
    for run in runs:
        subprocess.run(["rm", "-rf", str(run)], check=True)
    env = dict(os.environ, **spec["env"])
    command = [sys.executable, "-m", "studio", "train", "--recipe", "tiny-lora", "--subject", str(subject_dir),
               "--set", f"steps={steps}", "--set", "sample_every=0", "--set", "checkpoint_every=0",
               "--set", "log_every=1", "--out"]
    started = time.perf_counter()
    processes = [subprocess.Popen([*command, str(run)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for run in runs]
    errors = [p.communicate()[1] for p in processes]
    wall = time.perf_counter() - started
    failed = [e[-400:] for p, e in zip(processes, errors, strict=True) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"{name}: a training process failed: {failed}")
    seconds = [step_seconds(run) for run in runs]
    return {"config": name, "processes": spec["processes"], "env": spec["env"], "wall_s": round(wall, 2),
            "step_ms": [round(1000 * s, 1) if s else None for s in seconds]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=80)
    args = parser.parse_args(argv)
    work = setup_environment()
    subject_dir = subject(64)
    rows = [run_config(name, spec, args.steps, subject_dir, work) for name, spec in CONFIGS.items()]
    alone = rows[0]["step_ms"][0]
    for row in rows:
        valid = [s for s in row["step_ms"] if s]
        row["slowdown_vs_alone"] = round(max(valid) / alone, 2) if valid and alone else None
    payload = {"machine": machine(), "steps": args.steps, "results": rows}
    table = markdown_table(["configuration", "processes", "step ms (each)", "slowest ÷ alone", "wall s"],
                           [[r["config"], r["processes"], ", ".join(str(s) for s in r["step_ms"]),
                             r["slowdown_vs_alone"], r["wall_s"]] for r in rows])
    json_path, md_path = write_results("concurrency", payload, "# Two processes on one CPU\n\n" + table)
    print(table)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
