"""The best-checkpoint, overfitting and early-stop rules over validation records (pure functions)."""

from __future__ import annotations

from studio.validation.history import records_from_events
from studio.validation.rules import RuleSettings, choose_best, overfitting, should_stop_early


def record(step, dino=None, clip_t=None, pres=None, loss=None, candidate=True):
    scores = None if dino is None else {"dino": dino, "clip_t": clip_t, "pres": pres, "clip_i": None}
    return {"type": "validation", "step": step, "loss": loss, "scores": scores, "candidate": candidate and step > 0}


BASE = record(0, dino=0.10, clip_t=0.30, pres=0.20, loss=1.0, candidate=False)


def test_best_is_the_highest_dino_among_checkpoints_whose_clip_t_held():
    records = [BASE, record(100, 0.40, 0.31), record(200, 0.60, 0.27), record(300, 0.50, 0.29), record(400, 0.45, 0.30)]
    best = choose_best(records, RuleSettings(metric="dino", clip_t_margin=0.02))
    # step 200 has the highest DINO but its CLIP-T fell 0.03 below the base's 0.30: excluded
    assert best["step"] == 300 and best["value"] == 0.50 and not best["fallback"]
    assert best["excluded"] == [{"step": 200, "why": best["excluded"][0]["why"]}]
    assert "0.270" in best["excluded"][0]["why"] and "step 200" in best["reason"]
    assert choose_best(records, RuleSettings(metric="dino", clip_t_margin=0.05))["step"] == 200


def test_the_base_and_non_candidates_are_never_chosen_and_ties_go_to_the_earlier_step():
    records = [record(0, 0.9, 0.3, candidate=False), record(50, 0.99, 0.3, candidate=False),
               record(100, 0.5, 0.3), record(200, 0.5, 0.3)]
    assert choose_best(records, RuleSettings())["step"] == 100


def test_loss_rule_picks_the_lowest_validation_loss():
    records = [BASE, record(100, loss=0.5), record(200, loss=0.3), record(300, loss=0.4)]
    best = choose_best(records, RuleSettings(metric="validation_loss"))
    assert best["step"] == 200 and best["value"] == 0.3 and "lowest" in best["reason"]


def test_when_nothing_qualifies_the_last_checkpoint_is_used_and_the_reason_says_so():
    records = [BASE, record(100, loss=0.5), record(200, loss=0.4)]  # no scores measured
    best = choose_best(records, RuleSettings(metric="dino"))
    assert best["step"] == 200 and best["fallback"] and "No checkpoint met the rule" in best["reason"]
    assert choose_best([BASE], RuleSettings()) is None


def test_overfitting_flags_a_clip_t_fall_while_dino_rises_naming_the_step():
    records = [BASE, record(100, 0.3, 0.31, 0.2), record(200, 0.4, 0.30, 0.2), record(300, 0.5, 0.26, 0.2)]
    flag = overfitting(records, RuleSettings(clip_t_drop=0.03))
    assert flag["step"] == 300 and "At step 300 the model has started to copy the photos" in flag["message"]
    assert "CLIP-T fell from 0.310 to 0.260" in flag["message"]
    assert overfitting(records, RuleSettings(clip_t_drop=0.06)) is None


def test_overfitting_flags_a_pres_rise_but_not_when_dino_stops_rising():
    rising = [BASE, record(100, 0.3, 0.3, 0.22), record(200, 0.4, 0.3, 0.30)]
    assert overfitting(rising, RuleSettings(pres_rise=0.05))["step"] == 200
    falling = [BASE, record(100, 0.4, 0.3, 0.22), record(200, 0.3, 0.2, 0.40)]  # DINO fell: not copying
    assert overfitting(falling, RuleSettings(pres_rise=0.05, clip_t_drop=0.03)) is None


def test_early_stop_after_k_validations_without_improvement():
    records = [BASE, record(100, 0.5, 0.3), record(200, 0.4, 0.3), record(300, 0.45, 0.3)]
    assert should_stop_early(records, RuleSettings(patience=3)) is None
    message = should_stop_early(records, RuleSettings(patience=2))
    assert message.startswith("Stopped early at step 300") and "not improved for 2 validations" in message
    assert should_stop_early(records, RuleSettings(patience=0)) is None


def test_history_drops_records_a_resume_rolled_back_and_keeps_the_newest_per_step():
    events = [record(0, loss=1.0), record(100, loss=0.5), record(200, loss=0.4),
              {"type": "resumed", "step": 100}, record(200, loss=0.39), record(300, loss=0.3)]
    kept = records_from_events(events)
    assert [(r["step"], r["loss"]) for r in kept] == [(0, 1.0), (100, 0.5), (200, 0.39), (300, 0.3)]
