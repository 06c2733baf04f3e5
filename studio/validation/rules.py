"""The declared rules over a run's validation history: best checkpoint, overfitting, early stop.

A *record* is one validation event (``{"type": "validation", "step", "loss", "class_loss",
"scores": {"clip_i", "clip_t", "dino", "pres"} | None, "candidate": bool, ...}``). The record at
step 0 is the untrained base. Each rule is a pure function of the records and the settings, and
says in words what it did, so the result can record *why* a checkpoint was chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

LOSS_METRIC = "validation_loss"
LABELS = {"dino": "DINO", "clip_i": "CLIP-I", "clip_t": "CLIP-T", "pres": "PRES", LOSS_METRIC: "validation loss"}


@dataclass(frozen=True)
class RuleSettings:
    """The settings the rules read (a subset of TrainConfig; any object with these attributes works)."""

    metric: str = "dino"
    clip_t_margin: float = 0.02
    patience: int = 0
    clip_t_drop: float = 0.03
    pres_rise: float = 0.05

    @staticmethod
    def from_config(config: Any) -> RuleSettings:
        return RuleSettings(config.best_checkpoint_metric, config.best_checkpoint_clip_t_margin,
                            config.early_stop_patience, config.overfit_clip_t_drop, config.overfit_pres_rise)


def describe_rule(settings: RuleSettings) -> str:
    """The rule in words, as the result records it."""
    if settings.metric == LOSS_METRIC:
        return "the lowest validation loss on the instance images, among checkpoints and the final step"
    return (f"the highest {LABELS[settings.metric]} among checkpoints whose CLIP-T is at most "
            f"{settings.clip_t_margin:g} below the untrained base's (step 0); the final step counts as a checkpoint")


def base_record(records: Sequence[dict]) -> dict | None:
    return next((r for r in records if r.get("step") == 0), None)


def _score(record: dict, name: str) -> float | None:
    if name == LOSS_METRIC:
        return record.get("loss")
    return (record.get("scores") or {}).get(name)


def _value(record: dict, metric: str) -> float | None:
    """The rule's value, bigger is better (the loss is negated)."""
    value = _score(record, metric)
    if value is None:
        return None
    return -value if metric == LOSS_METRIC else value


def eligible(record: dict, base: dict | None, settings: RuleSettings) -> tuple[bool, str]:
    """Whether a candidate record may be chosen, and if not, why (plain words)."""
    if _value(record, settings.metric) is None:
        return False, f"no {LABELS[settings.metric]} was measured at step {record['step']}"
    if settings.metric == LOSS_METRIC or base is None:
        return True, ""
    clip_t, base_clip_t = _score(record, "clip_t"), _score(base, "clip_t")
    if clip_t is None or base_clip_t is None:
        return True, ""
    if clip_t < base_clip_t - settings.clip_t_margin:
        return False, (f"its CLIP-T {clip_t:.3f} fell more than {settings.clip_t_margin:g} below the base's "
                       f"{base_clip_t:.3f}")
    return True, ""


def choose_best(records: Sequence[dict], settings: RuleSettings) -> dict | None:
    """The best candidate under the rule: ``{"step", "metric", "value", "rule", "reason", "excluded"}``.

    Candidates are records with ``candidate`` true (a checkpoint exists for the step, or it is the
    final step). Ties go to the earlier step (fewer steps, less drift). None when there is no candidate.
    """
    base = base_record(records)
    candidates = [r for r in records if r.get("candidate") and r.get("step", 0) > 0]
    if not candidates:
        return None
    chosen, excluded = None, []
    for record in candidates:
        ok, why = eligible(record, base, settings)
        if not ok:
            excluded.append({"step": record["step"], "why": why})
            continue
        if chosen is None or _value(record, settings.metric) > _value(chosen, settings.metric):
            chosen = record
    fallback = chosen is None
    if fallback:  # nothing passes: the last candidate, and say so
        chosen = candidates[-1]
    value = _score(chosen, settings.metric)
    label = LABELS[settings.metric]
    if fallback:
        reason = (f"No checkpoint met the rule ({'; '.join(e['why'] for e in excluded) or 'nothing measured'}), "
                  f"so the last one, step {chosen['step']}, is used.")
    else:
        reason = f"Step {chosen['step']} has the {'lowest' if settings.metric == LOSS_METRIC else 'highest'} {label}, {value:.4f}"
        if settings.metric != LOSS_METRIC and base is not None and _score(base, settings.metric) is not None:
            reason += f" (the untrained base: {_score(base, settings.metric):.4f})"
        reason += f", among {len(candidates) - len(excluded)} eligible of {len(candidates)} checkpoints."
        if excluded:
            reason += " Not eligible: " + "; ".join(f"step {e['step']}, {e['why']}" for e in excluded) + "."
    return {"step": chosen["step"], "metric": settings.metric, "value": value, "rule": describe_rule(settings),
            "reason": reason, "excluded": excluded, "fallback": fallback}


def validations_without_improvement(records: Sequence[dict], settings: RuleSettings) -> int:
    """How many validations (with the rule's value) have passed since the rule's value last improved."""
    best, since = None, 0
    for record in records:
        if record.get("step", 0) == 0:
            continue
        value = _value(record, settings.metric)
        if value is None:
            continue
        if best is None or value > best:
            best, since = value, 0
        else:
            since += 1
    return since


def should_stop_early(records: Sequence[dict], settings: RuleSettings) -> str | None:
    """A plain sentence when the run should end now (patience K reached), else None."""
    if settings.patience <= 0:
        return None
    since = validations_without_improvement(records, settings)
    if since < settings.patience:
        return None
    return (f"Stopped early at step {records[-1]['step']}: the {LABELS[settings.metric]} has not improved for "
            f"{since} validations (early_stop_patience is {settings.patience}).")


def overfitting(records: Sequence[dict], settings: RuleSettings) -> dict | None:
    """The first validation where CLIP-T fell or PRES rose past its threshold while DINO kept rising.

    Returns ``{"step", "signal", "message"}`` (the message in plain words), or None.
    """
    base = base_record(records)
    scored = [r for r in records if r.get("scores") and _score(r, "dino") is not None]
    best_clip_t: float | None = None
    for previous, record in zip(scored, scored[1:], strict=False):
        prior_clip_t = _score(previous, "clip_t")
        if prior_clip_t is not None:
            best_clip_t = prior_clip_t if best_clip_t is None else max(best_clip_t, prior_clip_t)
        if not _score(record, "dino") > _score(previous, "dino"):
            continue
        clip_t, pres = _score(record, "clip_t"), _score(record, "pres")
        signal = None
        if clip_t is not None and best_clip_t is not None and best_clip_t - clip_t > settings.clip_t_drop:
            signal = (f"CLIP-T fell from {best_clip_t:.3f} to {clip_t:.3f}: images follow their prompts less, "
                      f"while DINO rose to {_score(record, 'dino'):.3f}")
        base_pres = _score(base, "pres") if base else None
        if signal is None and pres is not None and base_pres is not None and pres - base_pres > settings.pres_rise:
            signal = (f"PRES rose from the base's {base_pres:.3f} to {pres:.3f}: plain '{record.get('class_prompt') or 'class'}' "
                      f"images now look like your subject, while DINO rose to {_score(record, 'dino'):.3f}")
        if signal:
            step = record["step"]
            return {"step": step, "signal": signal,
                    "message": f"At step {step} the model has started to copy the photos: {signal}. "
                               "Earlier checkpoints are likely better; the best-checkpoint rule accounts for it."}
    return None
