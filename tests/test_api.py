"""The public API (``import rnn_spectra as rs``): the README's example runs as written, and
``load_run`` opens a run the way the loop wrote it."""

import os
import re

import numpy as np
import pytest

import rnn_spectra as rs
from rnn_spectra.errors import WorkdirError

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_example() -> str:
    with open(os.path.join(HERE, "README.md")) as f:
        text = f.read()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.fixture
def trained(tiny_config, tmp_path):
    tiny_config.spectral.every, tiny_config.spectral.lyapunov_k = 10, 2
    tiny_config.checkpoint.every_steps = 10
    w = str(tmp_path / "run")
    rs.train_and_evaluate(tiny_config, w)
    return w


def test_the_readme_example_runs(trained, capsys):
    code = compile(_readme_example().replace('"runs/x"', repr(trained)), "README.md", "exec")
    exec(code, {})  # noqa: S102 - the README's own example is what this test runs
    out = capsys.readouterr().out
    assert "completed [10, 20]" in out


def test_load_run_gives_the_record_and_the_params(trained, tiny_config):
    run = rs.load_run(trained)
    assert run.summary["status"] == "completed" and run.steps == [10, 20]
    assert [r["step"] for r in run.spectra] == [0, 10, 20]
    assert {r["split"] for r in run.metrics} == {"train", "eval"}
    assert run.config.model.hidden_size == tiny_config.model.hidden_size
    p10, p20 = run.params(10), run.params()
    assert not np.allclose(p10["cell"]["W_s"], p20["cell"]["W_s"])  # two different checkpoints
    # The probe sequences are those the monitor measured: the step-20 row's Jacobian norms.
    cs = run.step_fn(p20)
    xs = run.probe_inputs(2)
    assert xs.shape == (2, tiny_config.task.seq_len, 2)
    log_sv = rs.spectral.product_log_singular_values(rs.spectral.step_jacobians(cs.step_fn, cs.s0, xs[0]))
    lags, row = run.spectra[-1]["lags"], run.spectra[-1]["jac_log_norm/per_probe"][0]
    T = tiny_config.task.seq_len
    np.testing.assert_allclose([log_sv[T - k, 0] for k in lags], row, rtol=1e-4, atol=1e-4)


def test_frames_hold_the_rows_of_metrics_and_spectra(trained, monkeypatch):
    import sys

    from rnn_spectra import workdir as wd

    run = rs.load_run(trained)
    assert run.metrics and run.spectra  # read now, before the row below is added
    # A non-finite value (a diverging step) is written as "nan" / "inf" in the jsonl file.
    wd.append_jsonl(os.path.join(trained, wd.METRICS),
                    [{"step": 21, "split": "train", "loss": float("nan"), "grad_norm": float("inf")}])
    metrics = rs.load_run(trained).metrics_frame()
    assert list(metrics.columns[:2]) == ["step", "split"] and len(metrics) == len(run.metrics) + 1
    assert metrics["step"].tolist() == [r["step"] for r in run.metrics] + [21]
    np.testing.assert_allclose(metrics["loss"][:-1], [r["loss"] for r in run.metrics])
    assert metrics["loss"].dtype == np.float64 and np.isnan(metrics["loss"].iloc[-1])
    assert metrics["grad_norm"].iloc[-1] == np.inf

    spectra = run.spectra_frame()
    assert spectra["step"].tolist() == [0, 10, 20] and spectra["step"].dtype == np.int64
    assert spectra["spectral_radius/W_s"].dtype == np.float64  # scalars: numeric columns
    sv = np.stack(spectra["sv/W_s"])  # arrays: one float64 array per row
    np.testing.assert_array_equal(sv, [r["sv/W_s"] for r in run.spectra])
    assert spectra["jac_log_norm/per_probe"].iloc[-1].shape == np.shape(run.spectra[-1]["jac_log_norm/per_probe"])

    monkeypatch.setitem(sys.modules, "pandas", None)  # pandas not installed
    with pytest.raises(ImportError, match=r"^Run.spectra_frame\(\) needs pandas; .*rnn_spectra\[frames\]"):
        run.spectra_frame()


def test_init_model_is_the_init_of_a_run_of_that_seed(tiny_config):
    from rnn_spectra import config as config_lib
    from rnn_spectra.train import build, init_state

    tiny_config.model.cell, tiny_config.seed = "irnn", 3
    _model, params = rs.init_model(cell="irnn", hidden_size=tiny_config.model.hidden_size,
                                   input_size=2, seed=3)
    want = init_state(build(config_lib.resolve(tiny_config)), 3)["params"]
    np.testing.assert_array_equal(np.asarray(params["cell"]["W_s"]), np.asarray(want["cell"]["W_s"]))
    np.testing.assert_array_equal(np.asarray(params["cell"]["W_x"]), np.asarray(want["cell"]["W_x"]))


def test_bad_input_is_one_line_naming_what_exists(trained, tmp_path):
    with pytest.raises(WorkdirError, match="does not exist"):
        rs.load_run(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkdirError, match="is not a run"):
        rs.load_run(str(tmp_path / "empty"))
    with pytest.raises(WorkdirError, match=r"no checkpoint at step 7; available: \[10, 20\]"):
        rs.load_run(trained).params(7)
    from rnn_spectra.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown cell"):
        rs.init_model(cell="lstmm", hidden_size=4)


def test_the_package_namespace_holds_the_api_not_its_imports():
    names = dir(rs)
    assert "annotations" not in names and "importlib" not in names
    assert {"load_run", "init_model", "default_config", "spectral"} <= set(names)


def test_apply_takes_flax_style_variables_too():
    model, params = rs.init_model(cell="relu_rnn", hidden_size=4, input_size=2, seed=0)
    x = np.ones((3, 5, 2), np.float32)
    np.testing.assert_array_equal(model.apply({"params": params}, x), model.apply(params, x))
    with pytest.raises(ValueError, match="must hold 'cell' and 'readout'"):
        model.apply({"weights": params}, x)
