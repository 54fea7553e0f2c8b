"""Open a run: ``load_run(workdir)`` for a trained one, ``init_model(...)`` for a fresh model.

The only way ``analyze``, the study's report and the notebooks read a workdir::

    import rnn_spectra as rs
    run = rs.load_run("runs/x")
    params = run.params()                       # latest checkpoint; run.steps lists them all
    cs = run.step_fn(params)                    # the CellStep the spectral functions take
    lam = rs.spectral.lyapunov_spectrum(cs.step_fn, cs.s0, run.probe_inputs()[0], k=8)

Files are read when first asked for, so opening the hundreds of members of a study is cheap.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from rnn_spectra import config as config_lib
from rnn_spectra import workdir as wd
from rnn_spectra.config_files import config_from_workdir
from rnn_spectra.errors import WorkdirError


class Run:
    """A workdir's record: ``config`` (ConfigDict), ``summary`` (dict or None while it runs),
    ``metrics`` / ``spectra`` (lists of row dicts; ``metrics_frame()`` / ``spectra_frame()`` as
    pandas DataFrames), ``steps`` (checkpoint steps), and what is
    built from them: ``run_config``, ``experiment``, ``model``, ``params(step)``, ``step_fn``,
    ``probe_inputs``."""

    def __init__(self, workdir: str):
        if not os.path.isdir(workdir):
            raise WorkdirError(f"workdir {workdir} does not exist")
        if not wd.is_run(workdir):
            raise WorkdirError(f"{workdir} is not a run (no {wd.CONFIG}); pass the workdir of a "
                               "training run (rnn-spectra train --workdir ...)")
        self.workdir = workdir

    def __repr__(self) -> str:
        return f"Run({self.workdir!r})"

    @functools.cached_property
    def config(self):
        return config_from_workdir(self.workdir)

    @functools.cached_property
    def run_config(self):
        return config_lib.resolve(self.config)

    @functools.cached_property
    def summary(self) -> dict | None:
        path = wd.path(self.workdir, wd.SUMMARY)
        return wd.read_json(path) if os.path.exists(path) else None

    @functools.cached_property
    def metrics(self) -> list[dict]:
        return wd.read_jsonl(wd.path(self.workdir, wd.METRICS))

    @functools.cached_property
    def spectra(self) -> list[dict]:
        return wd.read_jsonl(wd.path(self.workdir, wd.SPECTRA))

    def metrics_frame(self):
        """metrics.jsonl as a pandas DataFrame: one row per logged (step, split), one column per
        key (``step``, ``split`` first; a key a row lacks is NaN); non-finite values, which the
        file spells "nan" / "inf", are floats again. Needs pandas (the ``frames`` extra)."""
        return _frame(self.metrics, "metrics_frame")

    def spectra_frame(self):
        """spectra.jsonl as a pandas DataFrame: one row per measured step, ``step`` first. Scalar
        keys are numeric columns; array-valued keys (``sv/W_s``, ``lags``, ``lyapunov/mean``,
        the ``/per_probe`` values, ...) are object columns holding one float64 numpy array per
        row, so ``np.stack(df["sv/W_s"])`` is (steps, n). Needs pandas (the ``frames`` extra)."""
        return _frame(self.spectra, "spectra_frame")

    @property
    def steps(self) -> list[int]:
        """Steps with a checkpoint in ``WORKDIR/checkpoints`` (ascending; [] for none)."""
        return wd.checkpoint_steps(wd.path(self.workdir, wd.CHECKPOINTS))

    @functools.cached_property
    def experiment(self):
        from rnn_spectra.train import build

        return build(self.run_config)

    @property
    def model(self):
        """The ``SequenceModel`` (apply, unroll, cell_step)."""
        return self.experiment.model

    def params(self, step: int | None = None) -> dict:
        """The params of the checkpoint at ``step`` (default: the latest)."""
        return self.state(step)["params"]

    def state(self, step: int | None = None) -> dict:
        """The whole training state (params, opt_state, step, key) of a checkpoint."""
        from rnn_spectra.checkpointing import Checkpointer
        from rnn_spectra.train import init_state

        steps = self.steps
        if not steps:
            raise WorkdirError(f"no checkpoints in {wd.path(self.workdir, wd.CHECKPOINTS)}; train "
                               f"the run first (rnn-spectra train --workdir {self.workdir} ...)")
        if step is not None and step not in steps:
            raise WorkdirError(f"{self.workdir} has no checkpoint at step {step}; available: {steps}")
        done = (self.summary or {}).get("steps_completed")
        if step is None and isinstance(done, int) and steps[-1] < done:
            # an export or a save that did not finish: the newest checkpoint is not the run's end
            raise WorkdirError(f"{self.workdir}: its newest checkpoint is step {steps[-1]} but it "
                               f"completed {done} steps (a checkpoint copy was interrupted); re-run "
                               "its study's `report` (or `study`) command to redo the copy, or "
                               f"pass step={steps[-1]} (--step {steps[-1]}) to use that one")
        ckpt = Checkpointer(wd.path(self.workdir, wd.CHECKPOINTS))
        try:
            state, _ = ckpt.restore(init_state(self.experiment, self.run_config.seed), step=step)
        finally:
            ckpt.close()
        return state

    def step_fn(self, params):
        """The ``CellStep`` of the run's cell with ``params`` (the spectral functions' input)."""
        from rnn_spectra.dynamics import make_step_fn

        return make_step_fn(self.model, params["cell"])

    def probe_batch(self, n: int | None = None):
        """``(inputs_BxTxD, targets)`` from the run's own probe stream: for ``n`` up to
        ``spectral.probe_batch_size`` (the default) the sequences spectra.jsonl was measured on."""
        from rnn_spectra.spectral.monitor import probe_batch

        size = self.run_config.spectral.probe_batch_size
        if n is not None and (not isinstance(n, int) or n < 1):
            raise WorkdirError(f"probe sequences must be a positive integer, got {n!r}")
        inputs, targets = probe_batch(self.experiment, max(size, n or size))
        return inputs[: n or size], targets[: n or size]

    def probe_inputs(self, n: int = 1):
        """``n`` input sequences (n, T, D) of the run's task (see ``probe_batch``)."""
        return self.probe_batch(n)[0]


_NON_FINITE = {"nan", "inf", "-inf"}  # how workdir._clean writes non-finite floats to JSON


def _cell(value):
    """A JSON value as a frame cell: "nan"/"inf" back to floats, lists to float64 arrays."""
    if isinstance(value, str) and value in _NON_FINITE:
        return float(value)
    if isinstance(value, list):
        try:
            return np.asarray(value, dtype=np.float64)  # numpy reads "nan" / "-inf" as floats
        except (TypeError, ValueError):  # ragged or not numbers: kept as written
            return value
    return value


def _frame(rows: list[dict], method: str):
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(f"Run.{method}() needs pandas; install it with the frames extra: "
                          "pip install 'rnn_spectra[frames]'") from None
    found = {k for row in rows for k in row}
    keys = [k for k in ("step", "split") if k in found] + sorted(found - {"step", "split"})
    # Column by column: a list of equal-length arrays must stay one array per cell, not a 2-D block.
    return pd.DataFrame({k: pd.Series([_cell(row.get(k, np.nan)) for row in rows], dtype=object
                                      ).infer_objects() for k in keys}, columns=keys)


def load_run(workdir: str) -> Run:
    """Open the run in ``workdir`` (one-line WorkdirError if it is not one)."""
    return Run(os.fspath(workdir))


def init_model(*, cell: str, hidden_size: int, input_size: int = 1, output_size: int = 1,
               recurrent_init: str | None = None, init_scale: float | None = None, seed: int = 0,
               readout: str = "last", seq_len: int | None = None, **model_kwargs):
    """``(model, params)``: a fresh, untrained ``SequenceModel`` and its params from ``seed``
    (the same init stream a run of that seed uses). Other ``config.model`` keys as keywords;
    ``seq_len``: the input length T a run's task would give (IndRNN's init depends on it)."""
    from rnn_spectra.model import SequenceModel
    from rnn_spectra.rng import INIT_STREAM, stream_key

    cfg = config_lib.default_config()
    settings = {"model.cell": cell, "model.hidden_size": hidden_size,
                "model.recurrent_init": recurrent_init, "model.init_scale": init_scale,
                **{f"model.{k}": v for k, v in model_kwargs.items()}}
    config_lib.apply_overrides(cfg, {k: v for k, v in settings.items() if v is not None})
    run = config_lib.resolve(cfg)
    for name, value in (("input_size", input_size), ("output_size", output_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise config_lib.ConfigError(f"{name} must be a positive integer, got {value!r}")
    model = SequenceModel(run.model, input_size, output_size, readout, seq_len=seq_len)
    return model, model.init(stream_key(seed, INIT_STREAM))
