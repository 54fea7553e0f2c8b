"""TensorBoard event files of a run, in WORKDIR/tensorboard/, from the rows of the JSONL logs.

metrics.jsonl and spectra.jsonl stay the record; this is a view of the same rows for
``tensorboard --logdir WORKDIR``. It is written with tensorboardX (protobuf only, no TensorFlow).

Resume. A run resumed from ``start_step`` writes again the rows after that step (the loop's
``workdir.truncate_jsonl`` keeps ``step <= start_step``, and nothing when it restarts from step 0,
whose spectrum is measured again). Event files cannot be truncated, so each logger opens a new
file and writes a purge marker first (tensorboardX ``purge_step=P``: an
``Event(step=P, session_log=START)``):

- TensorBoard's Python loader (``--load_fast=false``) reads a run's files in name order and on
  that marker drops every event already read with ``step >= P``, for all tags;
- its Rust data server (the default) ignores the marker but drops, per tag, the points with
  ``step >= s`` when a point at step ``s`` comes after them, which the re-written rows do;
- :func:`read_scalars` does the former and keeps the last value for a (tag, step).

P is ``start_step + 1`` (0 when ``start_step`` is 0: a restart from scratch drops everything).
File names must sort in writing order: tensorboardX names a file after the second it was opened
and the host, and opens it with "wb", so a second logger within the same second would overwrite
the first one's file. A nanosecond clock and the pid in the name's suffix prevent that.
"""

from __future__ import annotations

import glob
import math
import os
import struct
import time
from collections.abc import Iterable, Mapping

import numpy as np

from rnn_spectra.errors import ConfigError

TB_DIR = "tensorboard"
INSTALL_HINT = ("log.tensorboard=true needs tensorboardX: "
                "pip install 'rnn_spectra[tensorboard]' (or pip install tensorboardX)")
NOT_METRICS = frozenset({"step", "split", "wall_time"})


def require_tensorboardx():
    """The tensorboardX module, or a one-line ConfigError with the install hint."""
    try:
        import tensorboardX
    except ImportError as e:
        if e.name == "tensorboardX":
            raise ConfigError(INSTALL_HINT) from None
        raise ConfigError(f"tensorboardX is installed but fails to import ({e}); {INSTALL_HINT}") from None
    return tensorboardX


def _finite(value) -> float | None:
    """``value`` as a float if it is a finite real number; None for None, bools, strings
    ("-inf", "nan": how some rows spell non-finite values), lists and non-finite numbers."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _seq(values) -> list:
    """A row's list (or 1-D array) as a list; [] for a missing key or anything else."""
    if isinstance(values, np.ndarray):
        return values.reshape(-1).tolist()
    return list(values) if isinstance(values, (list, tuple)) else []


def _finite_array(values) -> np.ndarray:
    """The finite entries of a list that may hold None, strings or non-finite floats."""
    return np.asarray([v for v in map(_finite, _seq(values)) if v is not None], dtype=np.float64)


# spectra.jsonl means logged as scalars "spectral/<key without /mean>" (monitor.py defines them).
SUMMARY_KEYS = ("step_norm/mean", "lyapunov/near_zero/mean", "lyapunov/kaplan_yorke/mean",
                "dead_units/mean", "zero_steps/mean")


# The scalars TensorBoard's HParams dashboard shows per run (tags the loggers write).
HPARAM_METRICS = ("eval/loss", "train/loss", "spectral/lyapunov/1")
# The config keys a run's HParams are (what a study varies between members, and its task).
HPARAM_KEYS = ("task.name", "task.seq_len", "model.cell", "model.hidden_size",
               "model.recurrent_init", "model.init_scale", "optim.name", "optim.learning_rate",
               "optim.clip", "optim.clip_value", "seed")


def hparams_of(config) -> dict:
    """``{key: value}`` of ``HPARAM_KEYS`` in a resolved ``RunConfig`` (None shown as "default")."""
    out = {}
    for key in HPARAM_KEYS:
        obj = config
        for part in key.split("."):
            obj = getattr(obj, part, None)
        out[key] = "default" if obj is None else obj
    return out


def read_hparams(workdir) -> dict:
    """The HParams written into WORKDIR/tensorboard/ (the last session start), as
    ``{name: value}``; {} if none."""
    require_tensorboardx()
    from tensorboardX.proto import event_pb2, plugin_hparams_pb2

    found = {}
    for path in sorted(glob.glob(os.path.join(os.fspath(workdir), TB_DIR, "*tfevents*"))):
        for payload in _records(path):
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value if event.HasField("summary") else ():
                if value.tag == "_hparams_/session_start_info":
                    data = plugin_hparams_pb2.HParamsPluginData.FromString(
                        value.metadata.plugin_data.content)
                    found = {k: getattr(v, v.WhichOneof("kind"))
                             for k, v in data.session_start_info.hparams.items()}
    return found


class TensorBoardLogger:
    """Writes metrics and spectra rows as TensorBoard scalars and histograms (see module doc).

    Non-finite values are skipped (TensorBoard cannot plot them), missing keys are not logged and
    unknown keys are ignored, so rows may gain keys later. Use as a context manager or ``close()``.
    """

    def __init__(self, workdir, *, start_step: int = 0, flush_secs: int = 30,
                 hparams: Mapping | None = None):
        tensorboardX = require_tensorboardx()
        self.logdir = os.path.join(os.fspath(workdir), TB_DIR)
        self.purge_step = int(start_step) + 1 if start_step else 0
        self._writer = tensorboardX.SummaryWriter(
            logdir=self.logdir, purge_step=self.purge_step, flush_secs=flush_secs,
            filename_suffix=f".{time.time_ns()}.{os.getpid()}")
        if hparams:
            self._hparams(hparams)

    def _hparams(self, hparams: Mapping) -> None:
        """The run's hyperparameters for TensorBoard's HParams dashboard, in the run's own
        directory (tensorboardX's ``add_hparams`` would open a sub-run), with the metrics the
        dashboard compares runs by."""
        from tensorboardX.summary import hparams as hparams_summary

        clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
        writer = self._writer._get_file_writer()
        for summary in hparams_summary(clean, {tag: 0.0 for tag in HPARAM_METRICS}):
            writer.add_summary(summary)

    def _scalar(self, tag: str, value, step: int) -> None:
        value = _finite(value)
        if value is not None:
            self._writer.add_scalar(tag, value, global_step=step)

    def log_metrics(self, rows: Iterable[Mapping] | Mapping) -> None:
        """Scalars ``<split>/<key>`` for every numeric key of each metrics row but step/wall_time."""
        for row in [rows] if isinstance(rows, Mapping) else rows:
            if _finite(row.get("step")) is None:
                continue
            step, split = int(row["step"]), row.get("split")
            for key, value in row.items():
                if key not in NOT_METRICS:
                    self._scalar(f"{split}/{key}" if split else str(key), value, step)

    def log_spectra(self, row: Mapping) -> None:
        """Scalars ``spectral/...`` and singular-value histograms of one spectra.jsonl row."""
        if _finite(row.get("step")) is None:
            return
        step = int(row["step"])
        matrices = {k.split("/", 1)[1] for k in row if k.startswith(("sv/", "sv_top/", "sv_bottom/"))}
        for m in sorted(matrices):
            # All singular values, or for H > FULL_SV_MAX only the recorded extremes.
            full = _seq(row.get(f"sv/{m}"))
            top = full or _seq(row.get(f"sv_top/{m}"))
            if top:
                self._scalar(f"spectral/sigma_max/{m}", top[0], step)  # descending: first = max
            values = _finite_array(full or top + _seq(row.get(f"sv_bottom/{m}")))
            if values.size:
                self._writer.add_histogram(f"spectral/singular_values/{m}", values, global_step=step)
        for key, value in row.items():
            if key.startswith("spectral_radius/"):
                self._scalar(f"spectral/{key}", value, step)
        for i, value in enumerate(_seq(row.get("lyapunov/mean")), start=1):
            self._scalar(f"spectral/lyapunov/{i}", value, step)
        for lag, value in zip(_seq(row.get("lags")), _seq(row.get("jac_log_norm/mean"))):
            self._scalar(f"spectral/jac_log_norm/lag_{int(lag):03d}", value, step)  # sorts by lag
        self._scalar("spectral/probe_loss", row.get("probe_loss"), step)
        for key in SUMMARY_KEYS:  # rows from before issue #14 lack them: nothing logged
            if key in row:
                self._scalar(f"spectral/{key[:-5]}", row[key], step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        """Write what is queued and close the file (safe to call twice)."""
        self._writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _records(path: str):
    """The payloads of a TFRecord file ([u64 length][u32 crc][data][u32 crc] each; CRCs not
    checked), stopping at a torn tail such as a file still being written."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        if pos + 16 + length > len(data):
            return
        yield data[pos + 12:pos + 12 + length]
        pos += 16 + length


def read_values(workdir) -> dict[str, dict[int, object]]:
    """``{tag: {step: Summary.Value}}`` of WORKDIR/tensorboard/: files in name order, a purge
    marker at step P dropping what came before with step >= P, the last value of a step kept.
    Needs only tensorboardX (its bundled protobufs)."""
    require_tensorboardx()
    from tensorboardX.proto import event_pb2

    series: dict[str, dict[int, object]] = {}
    for path in sorted(glob.glob(os.path.join(os.fspath(workdir), TB_DIR, "*tfevents*"))):
        for payload in _records(path):
            event = event_pb2.Event.FromString(payload)
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                for points in series.values():
                    for step in [s for s in points if s >= event.step]:
                        del points[step]
            elif event.HasField("summary"):
                for value in event.summary.value:
                    series.setdefault(value.tag, {})[int(event.step)] = value
    return {tag: points for tag, points in series.items() if points}


def read_scalars(workdir) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` sorted by step, each step once (float32 precision)."""
    out = {}
    for tag, points in read_values(workdir).items():
        pairs = [(s, float(v.simple_value)) for s, v in sorted(points.items())
                 if v.WhichOneof("value") == "simple_value"]
        if pairs:
            out[tag] = pairs
    return out


def read_histograms(workdir) -> dict[str, list[tuple[int, dict]]]:
    """``{tag: [(step, {min, max, num, sum, bucket_limit, bucket}), ...]}`` sorted by step."""
    out = {}
    for tag, points in read_values(workdir).items():
        hists = [(s, {"min": v.histo.min, "max": v.histo.max, "num": int(v.histo.num),
                      "sum": v.histo.sum, "bucket_limit": np.asarray(v.histo.bucket_limit),
                      "bucket": np.asarray(v.histo.bucket)})
                 for s, v in sorted(points.items()) if v.WhichOneof("value") == "histo"]
        if hists:
            out[tag] = hists
    return out
