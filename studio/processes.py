"""Whether a process id is alive: one answer for the job dispatcher and the CPU-share registry."""

from __future__ import annotations

import os


def process_alive(pid: int | None) -> bool:
    """``kill(pid, 0)``: True for a live process (or one we may not signal), False when it is gone."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
