"""The export's README.md: Hub YAML front matter plus what it is, how it scored and how to load it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from studio.methods import method_spec
from studio.run_layout import eval_report_path

SETTINGS_SHOWN = (
    "base", "resolution", "steps", "batch_size", "learning_rate", "text_encoder_learning_rate", "lr_scheduler",
    "optimizer", "train_text_encoder", "prior_preservation", "num_class_images", "prior_loss_weight",
    "lora_rank", "lora_alpha", "lora_target_modules", "num_vectors", "mixed_precision", "seed",
)


def read_eval_scores(run_dir: Path) -> dict[str, Any] | None:
    """The numbers of ``RUN/eval/report.json``: its ``overall`` section (or ``scores``), if readable.

    Read defensively: the report's schema belongs to evaluation and may grow; anything that is not
    a number (or a dict of numbers one level down) is skipped, a broken file yields ``None``.
    """
    path = eval_report_path(run_dir)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict):
        return None
    section = report.get("overall")
    if not isinstance(section, dict):
        section = report.get("scores")
    if not isinstance(section, dict):
        return None
    scores: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            scores[str(key)] = value
        elif isinstance(value, dict):
            inner = {str(k): v for k, v in value.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            if inner:
                scores[str(key)] = inner
    return scores or None


def _methods_of(key: str) -> tuple[str, ...]:
    from studio.settings import METHODS, declaration

    try:
        return declaration(key).metadata.get("methods") or METHODS
    except KeyError:
        return METHODS


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _scores_table(scores: dict[str, Any]) -> list[str]:
    lines = ["| metric | value |", "|---|---|"]
    for key, value in scores.items():
        if isinstance(value, dict):
            lines += [f"| {key}.{k} | {_fmt(v)} |" for k, v in value.items()]
        else:
            lines.append(f"| {key} | {_fmt(value)} |")
    return lines


def front_matter(info: dict[str, Any]) -> str:
    from studio.families import family_named

    family_tags = list(family_named(info.get("family", "sd1")).hub_tags)  # what the Hub's filters use
    tags = ["text-to-image", "diffusers", *family_tags, method_spec(info["method"]).hub_tag, "studio"]
    data: dict[str, Any] = {
        "base_model": info["base"],
        "library_name": "diffusers",
        "license": info.get("license", "creativeml-openrail-m"),
        "tags": tags,
        "instance_prompt": info["instance_prompt"],
        "widget": [{"text": info["prompt"]} | ({"output": {"url": info["example_image"]}} if info.get("example_image") else {})],
    }
    return "---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True) + "---\n"


def render_card(info: dict[str, Any]) -> str:
    """``info``: method, base, title, token, instance_prompt, prompt, settings, files (list of dicts with
    format/path/consumer/check), usage (list of markdown snippets), scores, notes, example_image."""
    method = method_spec(info["method"]).label
    lines = [front_matter(info), f"# {info['title']}", ""]
    shown = {key for key in SETTINGS_SHOWN if info["method"] in _methods_of(key)}
    lines += [
        f"{method} of **{info['base']}** on the subject `{info['instance_prompt']}`, trained with Studio. "
        f"Put `{info['token']}` in a prompt to get the subject, e.g. `{info['prompt']}`.",
        "",
        "## Training settings",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for key in SETTINGS_SHOWN:
        if key in shown and info["settings"].get(key) is not None:
            lines.append(f"| {key} | {info['settings'][key]} |")
    lines += ["", "## Evaluation", ""]
    if info.get("scores"):
        lines += ["From the run's evaluation report (`eval/report.json`, DreamBooth protocol, cosine similarities):", ""]
        lines += _scores_table(info["scores"])
    else:
        lines.append("Not evaluated yet: evaluate the run (Studio's Evaluate tab, or `studio eval RUN`), then export again to include the scores.")
    lines += ["", "## Files", "", "| file | format | loads in | verified |", "|---|---|---|---|"]
    for item in info["files"]:
        lines.append(f"| `{item['path']}` | {item['format']} | {item['consumer']} | {item['check']} |")
    lines += [
        "",
        "Every file above was reloaded through its consumer's own loader into a fresh pipeline when it was "
        "written, and an image at a fixed seed was compared with Studio's own image from the run.",
    ]
    for note in info.get("notes", []):
        lines += ["", note]
    lines += ["", "## How to use", "",
              "`DIR` below is the folder holding this card (for a Hub copy: `huggingface_hub.snapshot_download(repo_id)`).", ""]
    for snippet in info["usage"]:
        lines += [snippet, ""]
    return "\n".join(lines).rstrip() + "\n"
