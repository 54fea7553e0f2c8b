"""The files of a run's workdir: config.json, metrics.jsonl, spectra.jsonl, summary.json.

A workdir is the whole record of a run; everything downstream reads only these files and the
Orbax checkpoints beside them. Writes of whole files are atomic (temp file + rename) so a kill
at any moment leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable

from rnn_spectra.errors import WorkdirError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SPECTRA = "spectra.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars/arrays to Python, non-finite floats to strings ("nan", "inf")."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(_clean(obj), f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise WorkdirError(f"{path} does not exist") from None
    except (OSError, json.JSONDecodeError) as e:
        raise WorkdirError(f"cannot read {path}: {e}; the workdir may be damaged") from None


def append_jsonl(path: str, rows: Iterable[dict]) -> None:
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(_clean(row), sort_keys=True) + "\n")
        f.flush()


def read_jsonl(path: str) -> list[dict]:
    """All complete rows; a torn last line (killed mid-write) is ignored."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def truncate_jsonl(path: str, max_step: int) -> None:
    """Keep rows with step <= max_step (and drop a torn tail): resume continues without duplicates."""
    if not os.path.exists(path):
        return
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    os.replace(tmp, path)


def path(workdir: str, name: str) -> str:
    return os.path.join(workdir, name)


def is_run(workdir: str) -> bool:
    return os.path.isfile(path(workdir, CONFIG))
