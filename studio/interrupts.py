"""SIGTERM unwinds like Ctrl-C, so ``finally`` blocks run and temporary files are removed.

Without this a plain ``kill`` (or a container stop) ends the process at once and leaves the hidden
``.NAME.XXXXXXXX.tmp`` folders of an interrupted export or evaluation behind.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only; elsewhere a no-op)."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
