"""Several devices and several processes give the numbers of one device.

The 4-device checks run ``tests/parallel_worker.py`` in a fresh process (a backend's device count
is fixed at start-up); the two-process check launches ``rnn-spectra train`` twice with a
coordinator on 127.0.0.1, as a multi-host job would, and compares with a one-process run.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from rnn_spectra import config as config_lib
from rnn_spectra import parallel
from rnn_spectra import workdir as wd
from rnn_spectra.cli import main
from rnn_spectra.errors import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _env(**extra):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, **extra}
    env.pop("XLA_FLAGS", None)
    return env


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parallel")
    out = tmp / "result.json"
    proc = subprocess.run([sys.executable, os.path.join(HERE, "parallel_worker.py"), str(out), str(tmp)],
                          env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _assert_rows_close(a, b, rtol=1e-5):
    assert [r[:2] for r in a] == [r[:2] for r in b]
    np.testing.assert_allclose([r[2] for r in a], [r[2] for r in b], rtol=rtol)


def test_data_parallel_training_matches_one_device(four_devices):
    assert four_devices["devices"] == 4
    one, data = four_devices["single"]["none"], four_devices["single"]["data"]
    assert one["parallel"] == {"mode": "none", "devices": 1, "processes": 1}
    assert data["parallel"] == {"mode": "data", "devices": 4, "processes": 1}
    _assert_rows_close(one["rows"], data["rows"])
    for a, b in zip(one["params"], data["params"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sharded_sweep_matches_one_device_per_member(four_devices):
    one, sharded = four_devices["sweep"]["none"], four_devices["sweep"]["sweep"]
    assert sharded["parallel"] == {"mode": "sweep", "devices": 4, "processes": 1}
    for a, b in zip(one["rows"], sharded["rows"]):  # 3 members padded to 4: padding never leaks
        _assert_rows_close(a, b)
    np.testing.assert_allclose(one["test_loss"], sharded["test_loss"], rtol=1e-5)


def test_data_parallel_all_reduces_and_a_sharded_sweep_never_communicates(four_devices):
    assert "all-reduce" in four_devices["collectives"]["data"]
    assert four_devices["collectives"]["sweep"] == []


def test_sharded_checkpoint_resumes_on_one_device(four_devices):
    cut = four_devices["sweep"]["cut"]
    assert cut["statuses"] == ["interrupted"] * 3 + ["completed"] * 3
    for a, b in zip(four_devices["sweep"]["sweep"]["rows"], cut["rows"]):
        _assert_rows_close(a, b)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONFIG = """
from rnn_spectra.config import default_config

def get_config():
    c = default_config()
    c.task.seq_len, c.model.hidden_size, c.model.cell = 10, 8, "gru"
    c.optim.learning_rate = 1e-2
    c.train.steps, c.train.batch_size, c.train.log_every, c.train.progress = 12, 8, 4, False
    c.train.eval_every, c.train.eval_batches, c.train.eval_batch_size = 6, 2, 16
    c.spectral.every = 6
    c.checkpoint.every_steps = 6
    return c
"""


@pytest.mark.slow  # two JAX processes through a coordinator: ~25 s idle, ~50 s loaded
def test_two_processes_on_localhost_agree_with_one(tmp_path):
    config = tmp_path / "tiny.py"
    config.write_text(CONFIG)
    cmd = [sys.executable, "-m", "rnn_spectra.cli", "train", "--config", str(config)]
    single = tmp_path / "single"
    proc = subprocess.run(cmd + ["--workdir", str(single)], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    multi, port = tmp_path / "multi", _free_port()
    procs = [subprocess.Popen(cmd + ["--workdir", str(multi), "--coordinator", f"127.0.0.1:{port}",
                                     "--num-processes", "2", "--process-id", str(i)],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "process 1/2" in outs[1][1]

    summary = wd.read_json(wd.path(str(multi), wd.SUMMARY))
    assert summary["status"] == "completed"
    assert summary["parallel"] == {"mode": "data", "devices": 2, "processes": 2}
    a = wd.read_jsonl(wd.path(str(single), wd.METRICS))
    b = wd.read_jsonl(wd.path(str(multi), wd.METRICS))  # one writer: no duplicated rows
    assert [(r["step"], r["split"]) for r in a] == [(r["step"], r["split"]) for r in b]
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5)
    sa = wd.read_jsonl(wd.path(str(single), wd.SPECTRA))
    sb = wd.read_jsonl(wd.path(str(multi), wd.SPECTRA))
    assert [r["step"] for r in sa] == [r["step"] for r in sb] == [0, 6, 12]
    np.testing.assert_allclose(sa[-1]["sv/W_r"], sb[-1]["sv/W_r"], rtol=1e-5)
    # The checkpoints both processes wrote together restore in one process.
    assert sorted(os.listdir(wd.path(str(multi), wd.CHECKPOINTS))) == ["12", "6"]
    assert main(["analyze", "--workdir", str(multi)]) == 0


# ----------------------------------------------------------------------------- bad input
def test_parallel_config_errors_are_one_line(tiny_config):
    tiny_config.parallel.mode = "model"
    with pytest.raises(ConfigError, match="parallel.mode must be one of auto, none, data, sweep"):
        config_lib.resolve(tiny_config)
    tiny_config.parallel.mode = "sweep"
    with pytest.raises(ConfigError, match="shards the members of a study"):
        parallel.run_layout(config_lib.resolve(tiny_config).parallel, 8)
    tiny_config.parallel.mode, tiny_config.parallel.num_devices = "data", 64
    with pytest.raises(ConfigError, match="only 1 devices are visible"):
        parallel.run_layout(config_lib.resolve(tiny_config).parallel, 8)


def test_one_device_needs_no_mesh(tiny_config):
    layout = parallel.run_layout(config_lib.resolve(tiny_config).parallel, 8)
    assert layout.mode == "none" and layout.mesh is None and layout.size == 1
    assert parallel.padded_size(3, parallel.sweep_layout(config_lib.resolve(tiny_config).parallel, 8)) == 3


@pytest.mark.parametrize("argv, message", [
    (["--distributed", "on", "--coordinator", "127.0.0.1:1"], "go together"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "--process-id must be in"),
    (["--distributed", "off", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "0"],
     "--distributed off"),
])
def test_distributed_flag_errors(tmp_path, capsys, argv, message):
    code = main(["train", "--config", os.path.join(ROOT, "configs", "adding.py"),
                 "--workdir", str(tmp_path / "w"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_study_refuses_overrides_of_what_it_trains(tmp_path, capsys):
    code = main(["study", "--preset", "smoke", "--workdir", str(tmp_path / "s"),
                 "--config.model.hidden_size=8"])
    err = capsys.readouterr().err
    assert code == 2 and "only --config.parallel.*, --config.checkpoint.*" in err
