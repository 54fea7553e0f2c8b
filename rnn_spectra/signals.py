"""What SIGINT and SIGTERM do, for the length of a ``with`` block (no JAX: the CLI installs the
first from its first line). Before the training loop a signal raises ``Interrupted``
(``SetUpSignals``); inside it, it asks the loop to stop after the step (``SignalGuard``).
"""

from __future__ import annotations

import os
import signal
import sys

from rnn_spectra.errors import Interrupted


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


class SetUpSignals(SignalHandlers):
    """SIGINT/SIGTERM before the training loop takes them over (``SignalGuard``): raise
    Interrupted, so the command ends with one line and its interrupted code instead of a
    traceback (SIGINT) or a silent kill (SIGTERM). A second signal exits at once."""

    def __init__(self):
        super().__init__()
        self.fired = False

    def _handler(self, signum, frame):
        if self.fired:
            os._exit(128 + signum)
        self.fired = True
        e = Interrupted(f"interrupted by {signal.Signals(signum).name}")
        e.signum = signum
        raise e


_requested: str | None = None  # a stop asked for in this process and not yet acted on


def stop_requested() -> str | None:
    """The signal that asked this process to stop (its name), if any: a study checks it between
    groups, since a signal that lands at a group's last step finishes that group normally."""
    return _requested


def clear_stop() -> None:
    global _requested
    _requested = None


class SignalGuard(SignalHandlers):
    """First SIGTERM/SIGINT: ask the loop to stop after this step. Second: exit at once."""

    def __init__(self):
        super().__init__()
        self.requested = None

    def _handler(self, signum, frame):
        if self.requested is not None:
            print("second signal: exiting now", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        global _requested
        self.requested = _requested = signal.Signals(signum).name
        print(f"\n{self.requested}: finishing this step, saving a checkpoint, then exiting "
              "(send it again to exit at once)", file=sys.stderr, flush=True)
