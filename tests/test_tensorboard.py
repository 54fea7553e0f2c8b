"""TensorBoard event files: tags, steps and values read back, resume without duplicates, and the
install hint when tensorboardX is missing. Needs tensorboardX (skipped without it, except the
missing-package test); the cross-check against TensorBoard's own loader needs tensorboard."""

import json
import math
import os
import sys
import time

import numpy as np
import pytest

from rnn_spectra.errors import ConfigError
from rnn_spectra.tensorboard import (
    INSTALL_HINT,
    TensorBoardLogger,
    read_histograms,
    read_scalars,
    require_tensorboardx,
)

GATES = ("W_i", "W_f", "W_g", "W_o")
LAGS = [1, 2, 4, 9]
H = 6


@pytest.fixture
def tbx():
    return pytest.importorskip("tensorboardX")


def f32(x):
    """What an event file holds for x: scalars are float32."""
    return float(np.float32(x))


def metrics_rows(steps, scale=1.0):
    rows = []
    for s in steps:
        rows.append({"step": s, "split": "train", "loss": scale * 0.17 * s, "mse": scale * 0.17 * s,
                     "grad_norm": np.float32(0.9 + s), "learning_rate": 1e-3, "wall_time": 3.2,
                     "note": "text", "diverged": False, "bad": None, "nan": float("nan")})
        if s % 20 == 0:
            rows.append({"step": s, "split": "eval", "loss": scale * 0.5 * s,
                         "accuracy": 1.0 / s, "wall_time": 9.9})
    return rows


def spectra_row(step, scale=1.0, lyap_last=-math.inf):
    """An LSTM row as spectra.jsonl holds it (through JSON, so -inf arrives as -Infinity)."""
    rng = np.random.default_rng(step)
    row = {"step": step, "lags": LAGS, "grad_flow/t": [1, 5, 10], "lyapunov_k": 3,
           "probe_batch_size": 4, "cell": "lstm", "probe_loss": scale * (0.2 + step),
           "jac_log_norm/per_probe": [[0.1] * 4] * 4,
           "jac_log_norm/mean": [scale * (0.5 - i) for i in range(len(LAGS) - 1)] + [-math.inf],
           "lyapunov/per_probe": [[0.0, -0.1, lyap_last]] * 4,
           "lyapunov/mean": [scale * 0.01, scale * -0.2, lyap_last],
           "grad_flow/log_norm": [-1.0, -2.0, "-inf"], "future/key": {"anything": [1, 2]}}
    for g, gate in enumerate(GATES):
        row[f"sv/{gate}"] = sorted((scale * (g + 1) * rng.uniform(0.1, 2.0, H)).tolist(), reverse=True)
        row[f"spectral_radius/{gate}"] = scale * (g + 1) * 0.9
    return json.loads(json.dumps(row))


def spectral_tags():
    tags = {"spectral/probe_loss", "spectral/lyapunov/1", "spectral/lyapunov/2", "spectral/lyapunov/3"}
    tags |= {f"spectral/jac_log_norm/lag_{k:03d}" for k in LAGS[:-1]}  # the last lag is -inf
    for gate in GATES:
        tags |= {f"spectral/sigma_max/{gate}", f"spectral/spectral_radius/{gate}"}
    return tags


def test_metrics_rows_become_split_scalars(tmp_path, tbx):
    before = time.time()
    rows = metrics_rows([10, 20, 30, 40])
    with TensorBoardLogger(tmp_path) as tb:
        tb.log_metrics(rows)
    scalars = read_scalars(tmp_path)
    assert set(scalars) == {"train/loss", "train/mse", "train/grad_norm", "train/learning_rate",
                            "eval/loss", "eval/accuracy"}
    for row in rows:
        for key in ("loss", "mse", "grad_norm", "learning_rate", "accuracy"):
            if key in row:
                assert (row["step"], f32(row[key])) in scalars[f"{row['split']}/{key}"]
    assert [s for s, _ in scalars["train/loss"]] == [10, 20, 30, 40]
    assert [s for s, _ in scalars["eval/accuracy"]] == [20, 40]
    # The wall time is the writer's clock, not the row's "wall_time" (seconds since the start).
    from tensorboardX.proto import event_pb2

    from rnn_spectra.tensorboard import _records
    (path,) = (tmp_path / "tensorboard").iterdir()
    events = [event_pb2.Event.FromString(r) for r in _records(str(path))]
    stamped = [e.wall_time for e in events if e.HasField("summary")]
    assert len(stamped) == 4 * 4 + 2 * 2 and all(before - 1 <= t <= time.time() + 1 for t in stamped)


def test_spectra_rows_become_scalars_and_histograms(tmp_path, tbx):
    rows = [spectra_row(0), spectra_row(100, lyap_last=-0.5), spectra_row(200)]
    big = {"step": 300, "sv_top/W_s": [9.0, 8.0], "sv_bottom/W_s": [0.2, 0.1], "spectral_radius/W_s": 3.0}
    with TensorBoardLogger(tmp_path) as tb:
        for row in rows:
            tb.log_spectra(row)
        tb.log_spectra(big)
        tb.log_spectra({"step": 350, "sv/W_x": np.array([5.0, 2.0, np.nan]),  # straight from arrays
                        "lyapunov/mean": np.array([0.5]), "spectral_radius/W_x": np.float32(4.0)})
        tb.log_spectra({"step": 400})  # nothing to log, nothing breaks
    scalars = read_scalars(tmp_path)
    assert set(scalars) == spectral_tags() | {f"spectral/{kind}/{m}" for kind in ("sigma_max", "spectral_radius")
                                              for m in ("W_s", "W_x")}
    for gate in GATES:
        assert scalars[f"spectral/sigma_max/{gate}"] == [(r["step"], f32(r[f"sv/{gate}"][0])) for r in rows]
        assert scalars[f"spectral/spectral_radius/{gate}"] == [
            (r["step"], f32(r[f"spectral_radius/{gate}"])) for r in rows]
    assert scalars["spectral/lyapunov/2"] == [(r["step"], f32(-0.2)) for r in rows]
    assert scalars["spectral/lyapunov/3"] == [(100, f32(-0.5))]  # -inf skipped at 0 and 200
    assert scalars["spectral/jac_log_norm/lag_004"] == [(r["step"], f32(-1.5)) for r in rows]
    assert scalars["spectral/probe_loss"] == [(r["step"], f32(r["probe_loss"])) for r in rows]
    assert scalars["spectral/sigma_max/W_s"] == [(300, 9.0)]
    assert scalars["spectral/sigma_max/W_x"] == [(350, 5.0)]
    assert scalars["spectral/spectral_radius/W_x"] == [(350, 4.0)]
    assert scalars["spectral/lyapunov/1"][-1] == (350, 0.5)

    hists = read_histograms(tmp_path)
    assert set(hists) == {f"spectral/singular_values/{m}" for m in (*GATES, "W_s", "W_x")}
    assert [(s, h["num"], h["max"]) for s, h in hists["spectral/singular_values/W_x"]] == [(350, 2, 5.0)]
    for gate in GATES:
        got = hists[f"spectral/singular_values/{gate}"]
        assert [s for s, _ in got] == [0, 100, 200]
        for (_, h), row in zip(got, rows):
            sv = row[f"sv/{gate}"]
            assert h["num"] == H and h["bucket"].sum() == H
            assert h["max"] == pytest.approx(sv[0]) and h["min"] == pytest.approx(sv[-1])
            assert h["sum"] == pytest.approx(sum(sv))
    ((step, h),) = hists["spectral/singular_values/W_s"]
    assert step == 300 and h["num"] == 4 and h["max"] == 9.0 and h["min"] == pytest.approx(0.1)


def test_resume_overwrites_the_steps_after_start_and_keeps_the_rest(tmp_path, tbx):
    with TensorBoardLogger(tmp_path) as tb:
        tb.log_metrics(metrics_rows([10, 20, 30, 40, 50]))
        for step in (0, 20, 40):
            tb.log_spectra(spectra_row(step, lyap_last=-0.5))
    # Resumed from the checkpoint at 30, in the same second: a second file, not an overwrite.
    with TensorBoardLogger(tmp_path, start_step=30) as tb:
        assert tb.purge_step == 31
        tb.log_metrics(metrics_rows([40, 50, 60], scale=-1.0))
        for step in (40, 60):
            tb.log_spectra(spectra_row(step, scale=3.0))
    assert len(list((tmp_path / "tensorboard").iterdir())) == 2

    scalars = read_scalars(tmp_path)
    old = {r["step"]: r for r in metrics_rows([10, 20, 30]) if r["split"] == "train"}
    new = metrics_rows([40, 50, 60], scale=-1.0)
    expected = [(s, f32(old[s]["loss"])) for s in (10, 20, 30)] + [
        (r["step"], f32(r["loss"])) for r in new if r["split"] == "train"]
    assert scalars["train/loss"] == expected
    assert scalars["eval/loss"] == [(20, f32(0.5 * 20)), (40, f32(-0.5 * 40)), (60, f32(-0.5 * 60))]
    assert scalars["spectral/probe_loss"] == [(0, f32(0.2)), (20, f32(20.2)), (40, f32(3 * 40.2)),
                                              (60, f32(3 * 60.2))]
    hists = read_histograms(tmp_path)
    for gate in GATES:
        got = hists[f"spectral/singular_values/{gate}"]
        assert [s for s, _ in got] == [0, 20, 40, 60]
        assert got[2][1]["max"] == pytest.approx(spectra_row(40, scale=3.0)[f"sv/{gate}"][0])

    # A restart from scratch (start_step=0) measures step 0 again: the old files count for nothing.
    with TensorBoardLogger(tmp_path, start_step=0) as tb:
        tb.log_spectra(spectra_row(0, scale=2.0))
    scalars = read_scalars(tmp_path)
    assert set(scalars) == spectral_tags() - {"spectral/lyapunov/3"}  # -inf now, -0.5 before
    assert scalars["spectral/probe_loss"] == [(0, f32(0.4))]


def test_purge_drops_later_steps_even_when_not_written_again(tmp_path, tbx):
    """Interrupted again before step 50: the first run's 50 must not come back."""
    from tensorboardX.proto import event_pb2

    from rnn_spectra.tensorboard import _records
    with TensorBoardLogger(tmp_path) as tb:
        tb.log_metrics(metrics_rows([10, 20, 30, 40, 50]))
    with TensorBoardLogger(tmp_path, start_step=30) as tb:
        tb.log_metrics(metrics_rows([40], scale=2.0))
    scalars = read_scalars(tmp_path)
    assert scalars["train/loss"] == [(10, f32(1.7)), (20, f32(3.4)), (30, f32(5.1)), (40, f32(13.6))]
    assert scalars["eval/loss"] == [(20, f32(10.0)), (40, f32(40.0))]
    # What TensorBoard relies on: the later file starts with a SessionLog.START at step 31.
    newest = sorted((tmp_path / "tensorboard").iterdir())[-1]
    markers = [e.step for e in map(event_pb2.Event.FromString, _records(str(newest)))
               if e.HasField("session_log") and e.session_log.status == event_pb2.SessionLog.START]
    assert markers == [31]


def test_reader_stops_at_a_torn_tail(tmp_path, tbx):
    with TensorBoardLogger(tmp_path) as tb:
        tb.log_metrics(metrics_rows([10]))
    (path,) = (tmp_path / "tensorboard").iterdir()
    with open(path, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00\x01\x02")  # a record still being written
    assert read_scalars(tmp_path)["train/loss"] == [(10, f32(1.7))]


def test_tensorboard_own_loader_agrees(tmp_path, tbx):
    """TensorBoard's Python loader (--load_fast=false) sees what read_scalars sees."""
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    with TensorBoardLogger(tmp_path) as tb:
        tb.log_metrics(metrics_rows([10, 20, 30, 40, 50]))
        tb.log_spectra(spectra_row(40))
    with TensorBoardLogger(tmp_path, start_step=30) as tb:
        tb.log_metrics(metrics_rows([40, 50, 60], scale=-1.0))
    acc = ea.EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    ours = read_scalars(tmp_path)
    assert {t for t in acc.Tags()["scalars"] if acc.Scalars(t)} == set(ours)
    assert "spectral/probe_loss" not in ours  # step 40 > 30, purged and not written again
    for tag, points in ours.items():
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == points


def test_missing_tensorboardx_is_a_config_error_with_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # the import now fails
    for call in (require_tensorboardx, lambda: TensorBoardLogger(tmp_path), lambda: read_scalars(tmp_path)):
        with pytest.raises(ConfigError) as info:
            call()
        message = str(info.value)
        assert message == INSTALL_HINT and "\n" not in message
        assert "pip install tensorboardX" in message and "rnn_spectra[tensorboard]" in message
    assert not os.path.exists(tmp_path / "tensorboard")


def test_a_run_with_log_tensorboard_writes_its_rows_and_resumes_without_duplicates(tiny_config, tmp_path):
    """The loop's own events: every metrics row and spectra row, each step once after a resume."""
    pytest.importorskip("tensorboardX")
    from rnn_spectra import workdir as wd
    from rnn_spectra.loop import train_and_evaluate
    from rnn_spectra.tensorboard import read_scalars

    tiny_config.log.tensorboard = True
    tiny_config.spectral.every, tiny_config.spectral.lyapunov_k = 10, 2
    tiny_config.checkpoint.every_steps = 10
    w = str(tmp_path / "run")
    tiny_config.train.steps = 10
    train_and_evaluate(tiny_config, w)
    tiny_config.train.steps = 20  # resume from step 10: rows after it are written once more
    train_and_evaluate(tiny_config, w)
    scalars = read_scalars(w)
    train = [r for r in wd.read_jsonl(wd.path(w, wd.METRICS)) if r["split"] == "train"]
    assert [s for s, _ in scalars["train/loss"]] == [r["step"] for r in train]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [r["loss"] for r in train],
                               rtol=1e-6)
    assert [s for s, _ in scalars["train/grad_norm"]] == [r["step"] for r in train]
    assert [s for s, _ in scalars["eval/loss"]] == [10, 20]
    spectra = wd.read_jsonl(wd.path(w, wd.SPECTRA))
    assert [s for s, _ in scalars["spectral/sigma_max/W_s"]] == [r["step"] for r in spectra] == [0, 10, 20]
    assert "spectral/lyapunov/1" in scalars and "spectral/jac_log_norm/lag_001" in scalars
