"""Rules a study applies to a member's recorded rows: was it still learning when it stopped,
and how many instability events did it have. Pure functions of metrics.jsonl rows.
"""

from __future__ import annotations

import math

import numpy as np

PLATEAU_FRACTION = 0.25  # the last quarter of the training steps ...
PLATEAU_GAIN = 0.01  # ... must improve the best validation loss by at least 1% to count as learning
# ... and by at least 1% of the task's trivial baseline: a row at 5e-4 (a tenth of a percent of
# the baseline) whose loss moves by 1% is done for every purpose of a table, not still learning.
PLATEAU_ABSOLUTE = 0.01
LOSS_SPIKE = 10.0  # an instability event: a logged loss above 10x the running median so far
GRAD_SPIKE = 100.0  # ... or a pre-clip gradient norm above 100x its running median


def still_learning(eval_rows: list[dict], steps: int, baseline: float | None = None, *,
                   fraction: float = PLATEAU_FRACTION, gain: float = PLATEAU_GAIN,
                   absolute: float = PLATEAU_ABSOLUTE) -> bool:
    """True when the best validation loss of the last ``fraction`` of ``steps`` improved on the
    best before it by more than ``gain`` (relative) and, given the task's trivial ``baseline``,
    by more than ``absolute`` x ``baseline``: a run that stopped then was still learning, and its
    result is a property of the budget. Needs an eval in each part, else True (unknown counts as
    still learning: never call such a run a failure)."""
    cut = steps * (1.0 - fraction)
    before = [r["loss"] for r in eval_rows if r["step"] <= cut and _finite(r.get("loss"))]
    after = [r["loss"] for r in eval_rows if r["step"] > cut and _finite(r.get("loss"))]
    if not before or not after:
        return True
    best_before, drop = min(before), min(before) - min(after)
    relative = drop > gain * best_before
    return relative and (baseline is None or drop > absolute * baseline)


def instability_events(train_rows: list[dict], *, loss_spike: float = LOSS_SPIKE,
                       grad_spike: float = GRAD_SPIKE) -> int:
    """Logged train steps whose loss exceeds ``loss_spike`` x the median of the losses logged
    before it, or whose pre-clip gradient norm exceeds ``grad_spike`` x its running median; a
    non-finite loss or norm is an event too. The first logged step has no history and is never
    an event."""
    events, losses, norms = 0, [], []
    for r in train_rows:
        loss, norm = r.get("loss"), r.get("grad_norm")
        if losses and (not _finite(loss) or loss > loss_spike * float(np.median(losses))):
            events += 1
        elif norms and (not _finite(norm) or norm > grad_spike * float(np.median(norms))):
            events += 1
        if _finite(loss):
            losses.append(loss)
        if _finite(norm):
            norms.append(norm)
    return events


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
