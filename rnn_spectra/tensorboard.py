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
import os
import struct
import time
from collections.abc import Mapping

import numpy as np

from rnn_spectra.run_logs import RowLogger, import_backend

TB_DIR = "tensorboard"
INSTALL_HINT = ("log.tensorboard=true needs tensorboardX: "
                "pip install 'rnn_spectra[tensorboard]' (or pip install tensorboardX)")


def require_tensorboardx():
    """The tensorboardX module, or a one-line ConfigError with the install hint."""
    return import_backend("tensorboardX", INSTALL_HINT)


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


class TensorBoardLogger(RowLogger):
    """Writes metrics and spectra rows as TensorBoard scalars and histograms (see module doc).

    The tags are ``run_logs``' (shared with W&B): non-finite values are skipped (TensorBoard cannot
    plot them), missing keys are not logged and unknown keys are ignored, so rows may gain keys
    later. Use as a context manager or ``close()``.
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

    def write(self, step: int, scalars, histograms) -> None:
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, global_step=step)
        for tag, values in histograms.items():
            self._writer.add_histogram(tag, values, global_step=step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        """Write what is queued and close the file (safe to call twice)."""
        self._writer.close()


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
