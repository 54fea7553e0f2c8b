"""Weights & Biases runs of a run's rows (``log.wandb=true``), under WORKDIR/wandb/.

A view like TensorBoard's (``run_logs``: the same tags): the member's config is the W&B run's
config, metrics and spectra rows are scalars, singular values are histograms. Each row is logged
with its training step as the ``step`` field, which every chart uses as its x axis
(``define_metric``), not as W&B's own ``_step``: W&B drops a point whose ``_step`` is not above
the last one, and a resumed run writes again the rows after its checkpoint (the same values,
resume being exact), which would otherwise be lost warnings.

Resume. The W&B run id is kept in WORKDIR/wandb/run_id; a resumed or extended run opens the same
id with ``resume="allow"``, so online its points continue the same run, and offline each session
is a directory ``WORKDIR/wandb/offline-run-<time>-<id>`` that ``wandb sync`` uploads into it.
Console capture is off: metrics.jsonl is the record, and the progress bar owns stderr.

``read_offline_run`` reads an offline run back from its ``run-<id>.wandb`` file (W&B 0.31 ships no
Python reader; the format is LevelDB's log: 32 KiB blocks of CRC'd chunks, each whole record a
``wandb_internal_pb2.Record``).
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import string
import struct
from collections.abc import Mapping

from rnn_spectra.errors import ConfigError
from rnn_spectra.run_logs import RowLogger, import_backend

WANDB_DIR = "wandb"  # what wandb itself makes under the dir it is given
RUN_ID = os.path.join(WANDB_DIR, "run_id")
INSTALL_HINT = "log.wandb=true needs wandb: pip install 'rnn_spectra[wandb]' (or pip install wandb)"


def require_wandb():
    """The wandb module, or a one-line ConfigError with the install hint."""
    return import_backend("wandb", INSTALL_HINT)


def run_id(workdir: str) -> str:
    """The workdir's W&B run id: the stored one, or a new one stored now (lowercase letters and
    digits, what W&B's own ids are made of)."""
    path = os.path.join(workdir, RUN_ID)
    if os.path.exists(path):
        with open(path) as f:
            stored = f.read().strip()
        if stored:
            return stored
    new = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(new + "\n")
    return new


class WandbLogger(RowLogger):
    """One W&B run per workdir (several may be open in one process: a study's members).

    ``close`` returns once the run's data is on disk: ``run.finish()`` alone can return before
    W&B's service has written the last records (seen offline under load), and a study's worker
    processes end without the ``atexit`` hook that would wait for it. So the last logger open
    in a process shuts the service down (``wandb.teardown``); the next run starts it again.
    """

    open_runs = 0  # in this process

    def __init__(self, workdir, log, config: Mapping, *, group: str | None = None,
                 name: str | None = None):
        wandb = require_wandb()
        self._wandb, workdir = wandb, os.fspath(workdir)
        self.run_id, self.run = run_id(workdir), None
        try:
            self.run = wandb.init(
                project=log.wandb_project, entity=log.wandb_entity, mode=log.wandb_mode,
                dir=workdir, id=self.run_id, resume="allow", reinit="create_new",
                config=dict(config), group=group, name=name, save_code=False,
                settings=wandb.Settings(console="off"))
            WandbLogger.open_runs += 1
        except Exception as e:  # noqa: BLE001 - e.g. online without a login: one line, not a traceback
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"log.wandb: could not start the W&B run ({first}); log in with "
                              "`wandb login` or use --config.log.wandb_mode=offline") from None
        self.run.define_metric("step", hidden=True)
        self.run.define_metric("*", step_metric="step")

    def write(self, step: int, scalars, histograms) -> None:
        data = {"step": step, **scalars}
        for tag, values in histograms.items():
            data[tag] = self._wandb.Histogram(values, num_bins=min(64, max(1, len(values))))
        self.run.log(data)

    def close(self) -> None:
        """Finish the run (writes what is queued; safe to call twice)."""
        if self.run is None:
            return
        run, self.run = self.run, None
        try:
            run.finish()
        finally:
            WandbLogger.open_runs -= 1
            if not WandbLogger.open_runs:
                self._wandb.teardown()


# ----------------------------------------------------------------------------- reading back
_BLOCK, _CHUNK_HEADER, _FILE_HEADER = 32768, 7, 7  # LevelDB log; the file header is ":W&B" + 3
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: str):
    """The payloads of a .wandb file's records, stopping at a torn tail (CRCs not checked)."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path} is not a W&B run file")
    pos, parts = _FILE_HEADER, []
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # the rest of a block too short for a header is padding
            pos += left
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        chunk = data[pos + _CHUNK_HEADER:pos + _CHUNK_HEADER + length]
        if len(chunk) < length:
            return
        pos += _CHUNK_HEADER + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            parts = [chunk]
        elif kind == _MIDDLE:
            parts.append(chunk)
        elif kind == _LAST:
            yield b"".join(parts + [chunk])
            parts = []


def offline_runs(workdir) -> list[str]:
    """The offline run directories of a workdir, oldest first."""
    return sorted(glob.glob(os.path.join(os.fspath(workdir), WANDB_DIR, "offline-run-*")))


def read_offline_run(run_dir: str) -> dict:
    """``{"config": {key: value}, "history": [{key: value}, ...], "summary": {key: value}}`` of
    one offline run directory; a histogram is W&B's ``{"_type": "histogram", "bins", "values"}``."""
    require_wandb()
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    out = {"config": {}, "history": [], "summary": {}}

    def update(into: dict, items) -> dict:
        for item in items:  # a nested key (a histogram's fields) builds nested dicts
            *parents, last = list(item.nested_key) or [item.key]
            node = into
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = json.loads(item.value_json)
        return into

    for payload in _records(path):
        record = wandb_internal_pb2.Record.FromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":  # the config given to wandb.init
            update(out["config"], record.run.config.update)
        elif kind == "config":
            update(out["config"], record.config.update)
        elif kind == "history":
            out["history"].append(update({}, record.history.item))
        elif kind == "summary":
            update(out["summary"], record.summary.update)
    return out
