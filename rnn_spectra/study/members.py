"""What each study member must be, and whether its workdir still is that.

Members are ordinary workdirs, so extending one (``rnn-spectra train --workdir W/runs/...
--config.train.steps=30``) or deleting one is natural. ``study.json`` records, per member, a
hash of its resolved config and its steps (``record``); ``problem`` compares a member's workdir
with that record. ``report`` refuses a member that differs (or, in a finished study, is missing);
``study`` re-trains its group.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os

from rnn_spectra import config as config_lib
from rnn_spectra import workdir as wd
from rnn_spectra.config_files import config_from_dict
from rnn_spectra.errors import UserError

# Keys that say only how a member runs, never what it trains: the study's command line may set
# them (parallel.*, checkpoint.*), and they do not change a number.
HOW_IT_RUNS = ("parallel.", "checkpoint.", "train.progress", "log.tensorboard", "log.wandb")
FINISHED = ("completed", "diverged")


def comparable(config) -> dict:
    """A member's config (ConfigDict or dict) on today's defaults, flattened, without
    ``HOW_IT_RUNS`` and without the keys added later (``config.OFF_BY_DEFAULT``) while they hold
    the value that switches their feature off: a member recorded before they existed keeps its
    hash."""
    d = config.to_dict() if hasattr(config, "to_dict") else config
    flat = config_lib.flatten_dict(config_from_dict(d).to_dict())
    off = config_lib.OFF_BY_DEFAULT
    return {k: v for k, v in flat.items() if not k.startswith(HOW_IT_RUNS)
            and not (k in off and v == off[k])}


def config_hash(config) -> str:
    text = json.dumps(comparable(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record(config) -> dict:
    """The fields study.json keeps per member so that ``problem`` can check its workdir."""
    return {"config_hash": config_hash(config), "steps": int(config.train.steps)}


@dataclasses.dataclass(frozen=True)
class Problem:
    kind: str  # "missing" | "unfinished": not trained (yet); "changed" | "incomplete": edited
    text: str  # completes "study member runs/... <text>"

    @property
    def not_trained(self) -> bool:
        return self.kind in ("missing", "unfinished")


def problem(study_dir: str, rec: dict, preset: str | None = None) -> Problem | None:
    """Why the member ``rec`` (a study.json record) does not hold what the study trained, or None.
    ``preset`` names the keys that differ (the member's config is rebuilt from it)."""
    d = os.path.join(study_dir, rec["relpath"])
    if not os.path.isdir(d):
        return Problem("missing", "is missing (its workdir was deleted or never trained)")
    if not wd.is_run(d):
        return Problem("missing", f"is missing its {wd.CONFIG}")
    try:
        found = wd.read_json(wd.path(d, wd.CONFIG))
        found_hash = config_hash(found)
    except UserError:
        return Problem("changed", f"has a damaged {wd.CONFIG}")
    if found_hash != rec["config_hash"]:
        return Problem("changed", f"was changed after the study trained it "
                                  f"({_differences(found, rec, preset)})")
    path = wd.path(d, wd.SUMMARY)
    if not os.path.exists(path):
        return Problem("unfinished", "has not finished (no summary.json)")
    try:
        summary = wd.read_json(path)
    except UserError:
        summary = None
    if not isinstance(summary, dict):
        return Problem("incomplete", "has a damaged summary.json")
    status = summary.get("status")
    if status not in FINISHED:
        return Problem("unfinished", f"has not finished (status {status})")
    if status == "completed" and summary.get("steps_completed") != rec["steps"]:
        return Problem("incomplete", f"has {summary.get('steps_completed')} steps, the study "
                                     f"trains {rec['steps']}")
    # A member that diverged before its first logged step has no rows: that is its record.
    wanted = [] if status == "diverged" else [wd.METRICS] + (
        [wd.SPECTRA] if (found.get("spectral") or {}).get("every") else [])
    missing = [name for name in wanted if not os.path.exists(wd.path(d, name))]
    if missing:
        return Problem("incomplete", f"is incomplete (no {missing[0]})")
    return None


def _differences(found: dict, rec: dict, preset: str | None) -> str:
    from rnn_spectra.study.presets import PRESETS

    expected = _expected(PRESETS[preset]).get(rec["relpath"]) if preset in PRESETS else None
    if expected is not None and config_hash(expected) == rec["config_hash"]:
        a, b = comparable(expected), comparable(found)
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if keys:
            return ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:3]) + (
                f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    steps = (found.get("train") or {}).get("steps")
    if steps != rec["steps"]:
        return f"train.steps {rec['steps']!r} -> {steps!r}"
    return f"config hash {config_hash(found)}, the study recorded {rec['config_hash']}"


@functools.lru_cache(maxsize=4)
def _expected(p) -> dict:
    """relpath -> the member config preset ``p`` makes today."""
    from rnn_spectra.study.grid import expand, member_config

    return {m.relpath: member_config(p, m).to_dict() for m in expand(p)}
