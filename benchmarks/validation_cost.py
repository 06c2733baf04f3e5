"""What validation while training costs: its share of the training time, bounded and unbounded.

Runs the tiny recipes (tiny-sd, 64 px, CPU) whole, four ways: validation off; with the default
``validation_budget`` 0.15; with the tiny recipes' 0.5; and with the budget lifted, which shows what
every quick subject score would cost. The share is validation seconds / training seconds as the trainer
measures them (``train_s`` excludes validation; checkpoints and samples count as training).

    python -m benchmarks.validation_cost        # about 3 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks import common

RECIPES = ("tiny-lora", "tiny-dreambooth")
MODES = {"off": {"validation": False}, "budget 0.15 (the default)": {"validation_budget": 0.15},
         "budget 0.5 (tiny recipes)": {"validation_budget": 0.5}, "unbounded": {"validation_budget": 100.0}}


def measure(recipe: str, mode: str, work) -> dict[str, Any]:
    import torch

    import trainers
    from studio.config import load_config
    from studio.validation.history import validation_records

    torch.set_num_threads(1)
    overrides = {"sample_every": 0, **MODES[mode]}
    run_dir = common.fresh_run_dir(work, f"validation-{recipe}-{list(MODES).index(mode)}")
    started = time.perf_counter()
    result = trainers.train(load_config(recipe, overrides), common.subject(64), run_dir)
    wall = time.perf_counter() - started
    records = validation_records(run_dir)
    last = records[-1] if records else {}
    scored = [r for r in records if r.get("scores")]
    return {"recipe": recipe, "mode": mode, "wall_s": round(wall, 2), "steps": result["steps"],
            "validations": len(records), "scored": len(scored),
            "validation_s": last.get("validation_s"), "train_s": last.get("train_s"), "share": last.get("share"),
            "score_s_mean": round(sum(r["score_s"] for r in scored) / len(scored), 3) if scored else None,
            "best_step": (result.get("best_checkpoint") or {}).get("step")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    args = parser.parse_args(argv)
    work = common.setup_environment()
    rows = []
    for recipe in args.recipes.split(","):
        for mode in MODES:
            rows.append(common.run_isolated(measure, (recipe, mode, work), cap_gb=6.0, timeout_s=900))
            print(rows[-1], flush=True)
    payload = {"benchmark": "validation_cost", "machine": common.machine(), "rows": rows}
    markdown = "\n".join([
        "## Validation cost while training (tiny recipes, 64 px, CPU, one torch thread)\n",
        common.markdown_table(
            ["recipe", "validation", "wall s", "validations", "with subject score", "validation s", "training s",
             "share", "one score s", "best step"],
            [[r.get("recipe"), r.get("mode"), r.get("wall_s"), r.get("validations"), r.get("scored"),
              r.get("validation_s"), r.get("train_s"), r.get("share"), r.get("score_s_mean"), r.get("best_step")]
             for r in rows]),
    ])
    common.write_results("validation_cost", payload, markdown)
    print(markdown)
    return payload


if __name__ == "__main__":
    main()
