"""Installing SIGINT/SIGTERM handlers for the length of a ``with`` block (no JAX: the CLI uses
it from its first line). Subclasses say what a signal does in ``_handler``."""

from __future__ import annotations

import signal


class SignalHandlers:
    """Context: ``self._handler`` handles SIGTERM and SIGINT inside the block; the previous
    handlers come back on exit. Outside the main thread signals stay with the caller."""

    def __init__(self):
        self._old = {}

    def _handler(self, signum, frame):
        raise NotImplementedError

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
