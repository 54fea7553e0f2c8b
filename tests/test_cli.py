"""``rnn-spectra train``: the README example writes the workdir; bad input is one line on stderr,
exit code 2, never a traceback; divergence is a result (exit 0)."""

import json
import os
import subprocess
import sys

import pytest

from rnn_spectra.cells import CELLS, RECURRENT_INITS
from rnn_spectra.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADDING = os.path.join(REPO, "configs", "adding.py")
# Shrinks the real adding config to seconds.
TINY = ["--config.task.seq_len=10", "--config.model.hidden_size=8", "--config.train.steps=6",
        "--config.train.batch_size=8", "--config.train.eval_every=3", "--config.train.log_every=2",
        "--config.train.eval_batches=1", "--config.train.eval_batch_size=16",
        "--config.train.progress=false"]


def run_cli(capsys, *args):
    code = main(["train", *args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *fragments):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # one line, no traceback
    assert "Traceback" not in err
    assert lines[0].startswith("rnn-spectra train: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_example_writes_the_workdir(capsys, tmp_path):
    workdir = tmp_path / "x"
    code, out, err = run_cli(capsys, "--config", ADDING, "--workdir", str(workdir),
                             "--config.model.cell=relu_rnn", *TINY)
    assert code == 0, err
    assert "status=completed" in out
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["cell"] == "relu_rnn" and config["train"]["steps"] == 6
    assert config["task"]["seq_len"] == 10
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert [r["step"] for r in evals] == [3, 6]
    for r in train:
        assert {"step", "split", "loss", "mse", "frac_sq_err_lt_0.16", "grad_norm", "learning_rate",
                "wall_time"} <= set(r), r
        assert r["learning_rate"] == pytest.approx(1e-3)
        assert r["grad_norm"] > 0
    for r in evals:
        assert {"step", "split", "loss", "mse", "wall_time"} <= set(r)
    assert train[-1]["wall_time"] >= train[0]["wall_time"] >= 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["final_eval"]["loss"] == pytest.approx(evals[-1]["loss"])
    h, d = 8, 2
    assert summary["num_params"] == d * h + h * h + h + h + 1
    assert summary["wall_time_s"] > 0
    assert os.path.isdir(workdir / "checkpoints")

    # The same workdir with a different config is refused, naming the key.
    code, _, err = run_cli(capsys, "--config", ADDING, "--workdir", str(workdir),
                           "--config.model.cell=tanh_rnn", *TINY)
    assert_user_error(code, err, "different config", "model.cell")


def test_diverged_run_exits_zero_with_status_in_summary(capsys, tmp_path):
    workdir = tmp_path / "boom"
    code, out, err = run_cli(capsys, "--config", ADDING, "--workdir", str(workdir), *TINY,
                             "--config.task.seq_len=200", "--config.model.cell=relu_rnn",
                             "--config.model.recurrent_init=identity", "--config.model.init_scale=2.0",
                             "--config.optim.clip=none")
    assert code == 0, err
    assert "Traceback" not in err
    assert "diverged" in out and "diverged" in err
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert summary["diverged_step"] == 1


@pytest.mark.parametrize("override,fragments", [
    ("--config.model.hiden_size=4", ["unknown config key --config.model.hiden_size",
                                     "--config.model.hidden_size"]),
    ("--config.optim.learning_rat=0.1", ["--config.optim.learning_rate"]),
    ("--config.model.cell=lstmm", ["unknown cell 'lstmm'", "valid: " + ", ".join(sorted(CELLS))]),
    ("--config.task.name=copy", ["unknown task 'copy'", "adding, copying"]),
    ("--config.optim.name=adamw", ["unknown optimizer 'adamw'", "adam, rmsprop, sgd"]),
    ("--config.model.recurrent_init=orth", ["unknown recurrent init 'orth'",
                                            "valid: " + ", ".join(sorted(RECURRENT_INITS))]),
    ("--config.optim.clip=norm", ["unknown clipping 'norm'", "agc, global_norm, none, value"]),
    ("--config.model.hidden_size=0", ["model.hidden_size must be a positive int"]),
    ("--config.model.hidden_size=-3", ["model.hidden_size must be a positive int"]),
    ("--config.train.batch_size=0", ["train.batch_size must be a positive int"]),
    ("--config.train.steps=-1", ["train.steps must be a positive int"]),
    ("--config.task.seq_len=0", ["task.seq_len must be an integer >= 2"]),
    ("--config.optim.learning_rate=0", ["optim.learning_rate must be a positive"]),
    ("--config.model.hidden_size=abc", ["--config.model.hidden_size expects a int"]),
    # Non-finite numbers pass a "<= 0" check; they are refused by name, before the workdir exists.
    ("--config.optim.learning_rate=1e999", ["optim.learning_rate must be a finite number"]),
    ("--config.optim.learning_rate=nan", ["optim.learning_rate must be a finite number"]),
    ("--config.model.init_scale=1e999", ["model.init_scale must be a finite number"]),
    ("--config.checkpoint.every_minutes=1e999", ["checkpoint.every_minutes must be a finite number"]),
])
def test_bad_overrides(capsys, tmp_path, override, fragments):
    workdir = tmp_path / "w"
    code, _, err = run_cli(capsys, "--config", ADDING, "--workdir", str(workdir), override)
    assert_user_error(code, err, *fragments)
    assert not workdir.exists()  # fails before touching the workdir


def test_missing_config_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path / "w"))
    assert_user_error(code, err, "nope.py", "does not exist")


def test_the_ml_collections_file_arg_form_is_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "--config", f"{ADDING}:relu", "--workdir", str(tmp_path / "w"))
    assert_user_error(code, err, "FILE:ARG form is not supported", "--config.KEY=VALUE")
    assert not (tmp_path / "w").exists()


def test_config_file_whose_get_config_raises(capsys, tmp_path):
    path = tmp_path / "raises.py"
    path.write_text("def get_config():\n    raise RuntimeError('boom')\n")
    code, _, err = run_cli(capsys, "--config", str(path), "--workdir", str(tmp_path / "w"))
    assert_user_error(code, err, "raises.py", "get_config() raised RuntimeError: boom")


def test_config_file_without_get_config(capsys, tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("X = 1\n")
    code, _, err = run_cli(capsys, "--config", str(path), "--workdir", str(tmp_path / "w"))
    assert_user_error(code, err, "empty.py", "no get_config()")


def test_config_file_that_fails_to_import(capsys, tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import not_a_module_anywhere\n")
    code, _, err = run_cli(capsys, "--config", str(path), "--workdir", str(tmp_path / "w"))
    assert_user_error(code, err, "broken.py", "failed to import", "ModuleNotFoundError")
    path.write_text("def get_config(:\n")
    code, _, err = run_cli(capsys, "--config", str(path), "--workdir", str(tmp_path / "w"))
    assert_user_error(code, err, "broken.py", "SyntaxError")


def test_config_file_returning_the_wrong_type(capsys, tmp_path):
    path = tmp_path / "dict.py"
    path.write_text("def get_config():\n    return {'seed': 0}\n")
    code, _, err = run_cli(capsys, "--config", str(path), "--workdir", str(tmp_path / "w"))
    assert_user_error(code, err, "ConfigDict")


def test_stray_argument(capsys, tmp_path):
    code, _, err = run_cli(capsys, "--config", ADDING, "--workdir", str(tmp_path / "w"), "steps=5")
    assert_user_error(code, err, "unrecognised argument")


def test_console_script_bad_input_in_a_real_process(tmp_path):
    """The installed entry point: exit 2 and one stderr line, no traceback."""
    exe = os.path.join(os.path.dirname(sys.executable), "rnn-spectra")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "rnn_spectra"]
    proc = subprocess.run([*cmd, "train", "--config", ADDING, "--workdir", str(tmp_path / "w"),
                           "--config.model.cell=lstmm"], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown cell 'lstmm'" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("setting", ["folder", "off"])
def test_the_command_line_compiles_through_a_persistent_cache(tmp_path, setting):
    """`rnn-spectra` turns JAX's compilation cache on (a shape's programs compile once per
    machine: the spectral monitor's ~3 s compile is most of its cost in a short run); `off`
    turns it off. Checked in a fresh interpreter: the setting is process-global."""
    value = str(tmp_path / "cache") if setting == "folder" else "off"
    code = ("from rnn_spectra.backend import enable_compilation_cache; enable_compilation_cache(); "
            "import jax; print(jax.config.jax_compilation_cache_dir)")
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "RNN_SPECTRA_COMPILATION_CACHE": value}).stdout.strip()
    assert out == (value if setting == "folder" else "None")
    assert os.path.isdir(value) == (setting == "folder")


@pytest.mark.parametrize("platform", ["cuda", "gpu"])
def test_a_platform_this_machine_lacks_is_one_line(tmp_path, platform):
    """JAX_PLATFORMS=cuda on a machine without a GPU was a bare AssertionError ("gpu": backend
    'rocm' not known), from deep inside JAX; now one line naming the platforms JAX has."""
    proc = subprocess.run([sys.executable, "-m", "rnn_spectra", "train", "--config", ADDING,
                           "--workdir", str(tmp_path / "w"), *TINY], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": platform}, timeout=120)
    if proc.returncode == 0:
        pytest.skip(f"this machine has a {platform} backend")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"rnn-spectra train: error: JAX cannot start platform '{platform}'")
    assert "this JAX has cpu" in lines[0]
    assert not (tmp_path / "w").exists()


def test_a_model_too_large_for_memory_is_refused_before_the_workdir(capsys, tmp_path, monkeypatch):
    """hidden_size=1000000 was a RESOURCE_EXHAUSTED traceback after config.json was written."""
    workdir = tmp_path / "w"
    code, _, err = run_cli(capsys, "--config", ADDING, "--workdir", str(workdir), *TINY,
                           "--config.model.hidden_size=1000000")
    assert_user_error(code, err, "this config needs about", "TiB", "params + optimizer state",
                      "lower model.hidden_size")
    assert not workdir.exists()
    # Compared with what the device has free: with 1 MiB free, even the tiny config is refused.
    monkeypatch.setattr("rnn_spectra.memory.available", lambda device=None: (1 << 20, "test memory"))
    code, _, err = run_cli(capsys, "--config", ADDING, "--workdir", str(workdir), *TINY,
                           "--config.model.hidden_size=512")
    assert_user_error(code, err, "but there is 1.0 MiB test memory")
    assert not workdir.exists()


def test_a_workdir_name_that_is_not_utf8_is_refused(capsys, tmp_path):
    """TensorStore cannot open such a path: it failed after config.json was written."""
    workdir = os.fsdecode(os.fsencode(str(tmp_path)) + b"/bad\xffname")
    code, _, err = run_cli(capsys, "--config", ADDING, "--workdir", workdir, *TINY)
    assert_user_error(code, err, "bad\\xffname", "not valid UTF-8")
    assert os.listdir(tmp_path) == []


def test_a_missing_config_file_suggests_only_a_path_that_exists_from_here(capsys, tmp_path,
                                                                          monkeypatch):
    """From another directory, `--config configs/adding.py` was answered with "try
    configs/adding.py": the very path that failed."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "--config", "configs/adding.py", "--workdir", "w")
    assert_user_error(code, err, "'configs/adding.py' does not exist (try ")
    line = err.strip()
    suggested = line.split("(try ", 1)[1].rstrip(")")
    assert suggested != "configs/adding.py" and os.path.isfile(suggested), line
