"""What every tab shares: the workspace (job queue and data dir), the playground, small caches."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from studio.jobs import Workspace
from studio.playground import Playground


@dataclass
class Context:
    ws: Workspace
    playground: Playground = field(default_factory=Playground)
    _tokenizers: dict[str, list[Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def tokenizers(self, base: str) -> list[Any]:
        """The base model's tokenizers, loaded once per base (a built-in is built on first use)."""
        from studio.confine import confine_refs
        from studio.models import load_tokenizers

        confine_refs([("Tokenizer of", base)], [self.ws.root])  # a path from the browser stays in the data dir
        with self._lock:
            if base not in self._tokenizers:
                self._tokenizers[base] = list(load_tokenizers(base))
            return self._tokenizers[base]

    def run_choices(self) -> list[tuple[str, str]]:
        """Finished training jobs as dropdown choices: (label, job id)."""
        from studio.jobs import finished_training_jobs

        return [(f"#{j.id} {j.params.get('config', {}).get('method', '')} {j.name}", str(j.id))
                for j in finished_training_jobs(self.ws)]
