"""A tqdm progress bar that follows training events (used by the CLI)."""

from __future__ import annotations

from tqdm.auto import tqdm

from studio.validation.history import (
    EARLY_STOP_EVENT,
    NOTE_EVENT,
    OVERFITTING_EVENT,
    VALIDATION_EVENT,
    validation_line,
)


class TrainingProgressBar:
    """Listener for trainer events: a tqdm bar with loss, lr and ETA; other events printed above it."""

    def __init__(self, *, disable: bool = False):
        self.bar: tqdm | None = None
        self.disable = disable

    def __call__(self, event: dict) -> None:
        kind = event["type"]
        if kind in ("started", "resumed"):
            self.bar = tqdm(total=event["total"], initial=event.get("step", 0), unit="step", desc="training", disable=self.disable)
        elif kind == "step" and self.bar is not None:
            self.bar.update(event["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{event['loss']:.4f}", lr=f"{event['lr']:.2e}")
        elif kind == "checkpoint_skipped":
            (self.bar.write if self.bar is not None else print)(f"warning: {event['message']}")
        elif kind == VALIDATION_EVENT:
            (self.bar.write if self.bar is not None else print)(validation_line(event))
        elif kind in (OVERFITTING_EVENT, EARLY_STOP_EVENT, NOTE_EVENT, "note"):
            (self.bar.write if self.bar is not None else print)(event["message"])
        elif kind in ("checkpoint", "sample") and self.bar is not None:
            self.bar.write(f"step {event['step']}: {kind} written")
        elif kind in ("finished", "failed", "cancelled") and self.bar is not None:
            self.bar.close()
