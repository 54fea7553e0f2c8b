"""Long runs: exact resume, kill -9 at random moments, SIGTERM, the workdir lock, divergence,
and bad input at the command line (one-line errors, exit 2, nothing overwritten).

Every comparison is bit-for-bit on CPU; only ``wall_time`` may differ between runs. Compiled
programs go to a persistent JAX cache shared with the subprocesses, so each restart of a run
costs an interpreter start, not a compilation.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from rnn_spectra import cli
from rnn_spectra import workdir as wd
from rnn_spectra.checkpointing import Checkpointer, CheckpointWarning
from rnn_spectra.config import resolve
from rnn_spectra.resume import WorkdirLock
from rnn_spectra.train import build, init_state
from rnn_spectra.loop import train_and_evaluate

CACHE_ENV = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")


@pytest.fixture(scope="module", autouse=True)
def compile_cache(request, tmp_path_factory):
    """A persistent compilation cache for this module and its subprocesses; undone afterwards."""
    # In pytest's own cache (.pytest_cache/d/), so later sessions skip the compilations too.
    try:
        path = str(request.config.cache.mkdir("rnn_spectra_jax_cache"))
    except AttributeError:  # -p no:cacheprovider
        path = str(tmp_path_factory.mktemp("jax_cache"))
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    for k, v in zip(keys, (path, 0.0, 0)):
        jax.config.update(k, v)
    compilation_cache.reset_cache()
    env = {"JAX_COMPILATION_CACHE_DIR": path, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    saved_env = {k: os.environ.get(k) for k in CACHE_ENV}
    os.environ.update(env)
    yield path
    for k, v in old.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()
    for k, v in saved_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ----------------------------------------------------------------------------- helpers
def rows(workdir, name=wd.METRICS):
    """Rows without wall_time, the one field allowed to differ between runs."""
    return [{k: v for k, v in r.items() if k != "wall_time"}
            for r in wd.read_jsonl(os.path.join(workdir, name))]


def final_state(cfg, workdir, step=None):
    ckpt = Checkpointer(os.path.join(workdir, wd.CHECKPOINTS))
    try:
        state, _ = ckpt.restore(init_state(build(resolve(cfg)), cfg.seed), step)
    finally:
        ckpt.close()
    return jax.device_get(state)


def assert_same_state(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def snapshot(workdir):
    """Hash of every file under workdir: 'nothing overwritten' means this does not change."""
    out = {}
    for root, dirs, files in os.walk(workdir):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.isfile(p):
                continue
            with open(p, "rb") as fh:
                out[os.path.relpath(p, workdir)] = hashlib.sha256(fh.read()).hexdigest()
        out.update({os.path.relpath(os.path.join(root, d), workdir) + "/": "dir" for d in dirs})
    return out


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def write_config_file(cfg, path):
    """A config file for the CLI holding exactly ``cfg``."""
    flat = json.dumps(json.dumps(_flatten(cfg.to_dict())))
    with open(path, "w") as f:
        f.write("import json\n\nfrom rnn_spectra.config import default_config\n\n\n"
                "def get_config():\n    c = default_config()\n"
                f"    c.update_from_flattened_dict(json.loads({flat}))\n    return c\n")
    return str(path)


def cli_train(capsys, *args):
    """Run ``rnn-spectra train`` in this process; (exit code, stderr lines)."""
    capsys.readouterr()
    code = cli.main(["train", *args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    errors = [line for line in err if line.startswith("rnn-spectra train: error:")]
    assert len(errors) == 1, err
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def spawn(workdir, *extra):
    """``rnn-spectra train --workdir W`` in a subprocess (resumes W's config.json)."""
    return subprocess.Popen(
        [sys.executable, "-m", "rnn_spectra", "train", "--workdir", str(workdir), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def max_step(workdir):
    r = wd.read_jsonl(os.path.join(workdir, wd.METRICS)) if os.path.isdir(workdir) else []
    return max((x["step"] for x in r), default=0)


_REFERENCE = {}


def reference(cfg, tmp_path_factory):
    """The uninterrupted run of ``cfg`` (memoised across tests): (workdir, rows, final state)."""
    key = json.dumps(cfg.to_dict(), sort_keys=True)
    if key not in _REFERENCE:
        w = str(tmp_path_factory.mktemp("reference"))
        assert train_and_evaluate(cfg, w)["status"] == "completed"
        _REFERENCE[key] = (w, rows(w), final_state(cfg, w))
    return _REFERENCE[key]


@pytest.fixture
def ckpt_config(tiny_config):
    c = tiny_config
    c.checkpoint.every_steps = 5
    c.checkpoint.keep = 10  # keep every checkpoint, so intermediate ones can be compared
    c.spectral.every = 10  # spectra.jsonl must continue exactly too (the half run ends at 10)
    return c


# ----------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("cell", ["tanh_rnn", pytest.param("lstm", marks=pytest.mark.slow)])
def test_exact_resume_matches_uninterrupted_run(ckpt_config, cell, tmp_path, tmp_path_factory):
    ckpt_config.model.cell = cell
    ref_dir, ref_rows, ref_state = reference(ckpt_config, tmp_path_factory)
    assert [r["step"] for r in ref_rows if r["split"] == "train"] == [5, 10, 15, 20]

    half = ckpt_config.copy_and_resolve_references()
    half.train.steps = 10
    assert train_and_evaluate(half, str(tmp_path))["steps_completed"] == 10
    # The checkpoint written while training went on (async save, donated buffers) holds the
    # state of its own step, not of a later one.
    assert_same_state(final_state(half, tmp_path), final_state(ckpt_config, ref_dir, step=10))

    summary = train_and_evaluate(ckpt_config, str(tmp_path))  # resume, extended to 20 steps
    assert summary["status"] == "completed" and summary["steps_completed"] == 20
    assert rows(tmp_path) == ref_rows
    assert rows(tmp_path, wd.SPECTRA) == rows(ref_dir, wd.SPECTRA)
    assert_same_state(final_state(ckpt_config, tmp_path), ref_state)


def test_resume_from_intermediate_checkpoint_drops_later_rows(ckpt_config, tmp_path, tmp_path_factory):
    """Rows written after the restored step (a kill before the next checkpoint) are replaced."""
    ref_dir, ref_rows, ref_state = reference(ckpt_config, tmp_path_factory)
    w = tmp_path / "run"
    shutil.copytree(ref_dir, w)
    for s in (15, 20):  # as if killed after writing step 20's rows but before any later save
        shutil.rmtree(w / wd.CHECKPOINTS / str(s))
    os.remove(w / wd.SUMMARY)
    with open(w / wd.METRICS, "a") as f:
        f.write('{"step": 21, "split": "tr')  # torn last line
    summary = train_and_evaluate(ckpt_config, str(w))
    assert summary["status"] == "completed"
    assert rows(w) == ref_rows
    assert rows(w, wd.SPECTRA) == rows(ref_dir, wd.SPECTRA)
    assert_same_state(final_state(ckpt_config, w), ref_state)


def test_damaged_latest_checkpoint_falls_back_and_finishes_exactly(ckpt_config, tmp_path,
                                                                   tmp_path_factory):
    ref_dir, ref_rows, ref_state = reference(ckpt_config, tmp_path_factory)
    w = tmp_path / "run"
    shutil.copytree(ref_dir, w)
    os.remove(w / wd.SUMMARY)  # killed after step 20's save, before summary.json
    shutil.rmtree(w / wd.CHECKPOINTS / "20" / "state")  # ... and that save never completed
    with pytest.warns(CheckpointWarning, match=f"skipping damaged checkpoint {w / wd.CHECKPOINTS / '20'}"):
        summary = train_and_evaluate(ckpt_config, str(w))
    assert summary["status"] == "completed" and 20 in summary["checkpoint_steps"]
    assert rows(w) == ref_rows
    assert_same_state(final_state(ckpt_config, w), ref_state)


def test_every_minutes_saves_during_the_run(ckpt_config, tmp_path, tmp_path_factory):
    reference(ckpt_config, tmp_path_factory)  # compiled already
    ckpt_config.checkpoint.every_steps = 0
    ckpt_config.checkpoint.every_minutes = 1e-9  # every step is "due"
    ckpt_config.checkpoint.keep = 3
    ckpt_config.train.steps = 8
    summary = train_and_evaluate(ckpt_config, str(tmp_path))
    assert summary["checkpoint_steps"] == [6, 7, 8]
    ckpt_config.checkpoint.every_minutes = 0.0
    summary = train_and_evaluate(ckpt_config, str(tmp_path / "none"))
    assert summary["checkpoint_steps"] == [8]  # neither policy: the final save only


def test_extending_a_cosine_schedule_is_refused(ckpt_config, tmp_path, tmp_path_factory):
    """train.steps may grow on resume, except where that rewrites the learning rates of the
    steps already trained (a cosine decay over a longer horizon)."""
    ref_dir, _, _ = reference(ckpt_config, tmp_path_factory)
    w = tmp_path / "run"
    shutil.copytree(ref_dir, w)
    ckpt_config.optim.schedule = "cosine"
    wd.write_json(str(w / wd.CONFIG), ckpt_config.to_dict())  # as if trained with cosine
    before = snapshot(w)
    ckpt_config.train.steps = 30
    from rnn_spectra.errors import ConfigError

    with pytest.raises(ConfigError, match="learning-rate schedule of the 20 steps"):
        train_and_evaluate(ckpt_config, str(w))
    assert snapshot(w) == before


# ----------------------------------------------------------------------------- kill -9
def kill_config(tiny_config):
    """The tiny shapes (so the compiled programs are shared), run long enough to be killed."""
    c = tiny_config
    c.train.steps = 600
    c.train.log_every = 10
    c.train.eval_every = 200
    c.checkpoint.every_steps = 25
    return c


@pytest.mark.parametrize("training_kills", [2, pytest.param(6, marks=pytest.mark.slow)])
def test_kill_9_at_random_moments_then_resume(tiny_config, tmp_path, tmp_path_factory, capsys,
                                              training_kills):
    cfg = kill_config(tiny_config)
    if training_kills > 2:
        cfg.train.steps = 2000
    ref_dir, ref_rows, ref_state = reference(cfg, tmp_path_factory)
    w = tmp_path / "run"
    cfg_file = write_config_file(cfg, tmp_path / "cfg.py")
    seed = int(os.environ.get("KILL_SEED", random.randrange(2**31)))  # KILL_SEED=n replays a run
    rng = random.Random(seed)
    # The same command each time, as a requeued job would run it. The first start is killed at a
    # random moment of its set-up; later ones once training has visibly progressed in that
    # process, after a further random delay (mid-step, mid-append or mid-save).
    proc = spawn(w, "--config", cfg_file)
    time.sleep(rng.uniform(0.5, 3.0))
    kills = int(proc.poll() is None)
    proc.kill()
    proc.communicate()
    for _ in range(training_kills):
        before = max_step(w)
        proc = spawn(w, "--config", cfg_file)
        deadline = time.monotonic() + 60
        while proc.poll() is None and max_step(w) <= before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.communicate()
    code, err = cli_train(capsys, "--config", cfg_file, "--workdir", str(w))  # the last start
    why = f"KILL_SEED={seed}"
    assert code == 0, (why, err)
    assert kills >= training_kills, f"{why}: the run ended before it was killed; lengthen it"
    summary = wd.read_json(os.path.join(w, wd.SUMMARY))
    assert summary["status"] == "completed" and summary["steps_completed"] == cfg.train.steps, why
    got = rows(w)
    keys = [(r["step"], r["split"]) for r in got]
    assert len(keys) == len(set(keys)), f"{why}: duplicated metric rows"
    assert got == ref_rows, why
    assert rows(w, wd.SPECTRA) == rows(ref_dir, wd.SPECTRA), why
    assert_same_state(final_state(cfg, w), ref_state)


# ----------------------------------------------------------------------------- SIGTERM and lock
def test_sigterm_checkpoints_and_resume_finishes_while_lock_refuses_second_writer(
        tiny_config, tmp_path, tmp_path_factory, capsys):
    cfg = kill_config(tiny_config)
    cfg.train.steps = 20000  # long enough to be caught mid-run
    cfg.checkpoint.every_steps = 1000
    w = tmp_path / "run"
    cfg_file = write_config_file(cfg, tmp_path / "cfg.py")
    proc = subprocess.Popen([sys.executable, "-m", "rnn_spectra", "train", "--config", cfg_file,
                             "--workdir", str(w)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and max_step(w) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1]

    # A second writer on the live workdir is refused: one line, exit 2, nothing touched.
    code, err = cli_train(capsys, "--workdir", str(w))
    line = assert_one_line_error(code, err, str(w), "in use by pid", str(proc.pid))

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err  # "interrupted, resume me": a scheduler requeues on it
    summary = wd.read_json(os.path.join(w, wd.SUMMARY))
    stopped = summary["steps_completed"]
    assert summary["status"] == "interrupted" and 20 <= stopped < cfg.train.steps, summary
    assert stopped in summary["checkpoint_steps"], err  # saved at the interruption
    assert max(r["step"] for r in wd.read_jsonl(os.path.join(w, wd.METRICS))) <= stopped

    cfg.train.steps = 600 if stopped < 600 else stopped + 10  # finish soon; same constant schedule
    cfg.checkpoint.every_steps = 25
    code, err = cli_train(capsys, "--workdir", str(w), f"--config.train.steps={cfg.train.steps}")
    assert code == 0, err
    assert any(f"resuming {w} from step {stopped}" in e for e in err)
    summary = wd.read_json(os.path.join(w, wd.SUMMARY))
    assert summary["status"] == "completed" and summary["steps_completed"] == cfg.train.steps
    got = rows(w)
    assert [r["step"] for r in got if r["split"] == "train"] == list(range(10, cfg.train.steps + 1, 10))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_set_up_ends_cleanly_with_the_interrupted_code(tmp_path, sig):
    """Before the loop's SignalGuard exists (here: while the config file's get_config() runs),
    SIGINT was a traceback and exit 130, SIGTERM a silent kill; both are now one line, exit 75,
    and nothing is left in the workdir."""
    marker = tmp_path / "in_get_config"
    cfg_file = tmp_path / "slow.py"
    cfg_file.write_text("import pathlib, time\nfrom rnn_spectra.config import default_config\n\n\n"
                        f"def get_config():\n    pathlib.Path({str(marker)!r}).touch()\n"
                        "    time.sleep(120)\n    return default_config()\n")
    w = tmp_path / "run"
    proc = spawn(w, "--config", str(cfg_file))
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()[1]
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"rnn-spectra train: interrupted by {sig.name} outside the training loop; "
                     "nothing trained is lost: run the same command to resume"], err
    assert not w.exists()


# ----------------------------------------------------------------------------- a full disk
# `rnn-spectra train` in a fresh process whose disk "fills up" at the checkpoint of step STEP:
# from there on Orbax's background commit of each save fails with ENOSPC (its JSON items are
# written there, after the arrays were handed over). A process of its own, as a real run: it
# exits after the failure, with whatever Orbax's abandoned threads print on the way out.
FULL_DISK_DRIVER = """
import errno, os, sys
from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh

original = jh.JsonCheckpointHandler._save_fn


async def save_fn(self, x, directory):
    if int(directory.parent.name.split(".")[0]) >= int(os.environ["FULL_AT_STEP"]):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return await original(self, x, directory)


jh.JsonCheckpointHandler._save_fn = save_fn
from rnn_spectra.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_full_disk_at_a_checkpoint_stops_there_in_one_line_and_resumes_exactly(
        ckpt_config, tmp_path, tmp_path_factory, capsys):
    ref_dir, ref_rows, ref_state = reference(ckpt_config, tmp_path_factory)
    w = tmp_path / "run"
    cfg_file = write_config_file(ckpt_config, tmp_path / "cfg.py")
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_DRIVER, "train", "--config", cfg_file,
                           "--workdir", str(w)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "FULL_AT_STEP": "10"})
    assert proc.returncode == 74, proc.stderr  # an I/O failure, not bad input
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1, proc.stderr  # no Orbax/TensorStore traceback, not even at exit
    ckpts = os.path.join(w, wd.CHECKPOINTS)
    assert err[0].startswith(f"rnn-spectra train: error: cannot save checkpoint step 10 to {ckpts}: "
                             "No space left on device ("), err
    assert "free on that file system" in err[0] and "latest: step 5" in err[0]
    summary = wd.read_json(os.path.join(w, wd.SUMMARY))
    assert summary["status"] == "failed" and summary["last_checkpoint_step"] == 5, summary
    assert summary["checkpoint_steps"] == [5] and "No space left" in summary["error"]
    # Stopped at the failed save (polled every step; the next save, at 15, at the latest).
    assert max(r["step"] for r in wd.read_jsonl(os.path.join(w, wd.METRICS))) <= 15

    # Space freed: the same command resumes from step 5, exactly.
    code, err = cli_train(capsys, "--config", cfg_file, "--workdir", str(w))
    assert code == 0, err
    assert any(f"resuming {w} from step 5" in e for e in err)
    assert wd.read_json(os.path.join(w, wd.SUMMARY))["status"] == "completed"
    assert rows(w) == ref_rows
    assert rows(w, wd.SPECTRA) == rows(ref_dir, wd.SPECTRA)
    assert_same_state(final_state(ckpt_config, w), ref_state)


@pytest.mark.slow
def test_a_real_full_disk_tmpfs(tiny_config, tmp_path, capsys):
    """The same on a real 600 KiB tmpfs (TensorStore's own ENOSPC error); root only."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs",
                                            str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        cfg = tiny_config
        cfg.model.hidden_size, cfg.train.steps, cfg.checkpoint.every_steps = 64, 200, 5
        cfg.checkpoint.keep = 100  # keep them all: the disk fills up
        cfg_file = write_config_file(cfg, tmp_path / "cfg.py")
        w = mnt / "run"
        code, err = cli_train(capsys, "--config", cfg_file, "--workdir", str(w))
        assert code == 74 and len(err) == 1, err
        assert "No space left on device (" in err[0] and "free on that file system" in err[0], err
        kept = sorted(int(n) for n in os.listdir(w / wd.CHECKPOINTS) if n.isdigit())
        assert kept and kept[-1] < cfg.train.steps
        subprocess.run(["mount", "-o", "remount,size=20m", str(mnt)], check=True)
        code, err = cli_train(capsys, "--config", cfg_file, "--workdir", str(w))
        assert code == 0, err
        assert any(f"resuming {w} from step {kept[-1]}" in e for e in err), err
        assert wd.read_json(os.path.join(w, wd.SUMMARY))["status"] == "completed"
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.parametrize("where", ["lock", "config.json"])
def test_a_new_run_on_a_full_disk_is_one_line_and_leaves_nothing(tiny_config, tmp_path, capsys,
                                                                 monkeypatch, where):
    cfg_file = write_config_file(tiny_config, tmp_path / "cfg.py")
    w = tmp_path / "new" / "run"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # The workdir's first writes: the pid into .lock, then config.json (written and fsynced).
    monkeypatch.setattr(os, "pwrite" if where == "lock" else "fsync", full)
    code, err = cli_train(capsys, "--config", cfg_file, "--workdir", str(w))
    monkeypatch.undo()
    assert code == 74 and len(err) == 1, err
    target = os.path.join(w, ".lock" if where == "lock" else wd.CONFIG)
    assert err[0].startswith(f"rnn-spectra train: error: cannot write") and target in err[0], err
    assert "No space left on device" in err[0] and "free on that file system" in err[0]
    assert not w.exists()  # no empty .lock, no half-claimed workdir


def test_lock_is_exclusive_and_released(tmp_path):
    with WorkdirLock(str(tmp_path)):
        from rnn_spectra.errors import WorkdirError

        with pytest.raises(WorkdirError, match="in use by pid"):
            WorkdirLock(str(tmp_path)).__enter__()
    with WorkdirLock(str(tmp_path)):  # released on exit
        pass


def test_first_signal_asks_to_stop_second_exits_at_once():
    """In a forked child (no JAX needed there): the first SIGTERM only sets the flag the loop
    polls after each step; the second ends the process at once with 128 + SIGTERM."""
    from rnn_spectra.signals import SignalGuard

    import warnings

    with warnings.catch_warnings():  # the child touches no JAX state: no deadlock to fear
        warnings.simplefilter("ignore", RuntimeWarning)
        pid = os.fork()
    if pid == 0:  # child: report through the exit code only
        code = 1
        try:
            sys.stderr = open(os.devnull, "w")
            with SignalGuard() as guard:
                os.kill(os.getpid(), signal.SIGTERM)
                code = 3 if guard.requested == "SIGTERM" else 4
                os.kill(os.getpid(), signal.SIGTERM)  # does not return
                code = 5
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 128 + signal.SIGTERM


# ----------------------------------------------------------------------------- divergence
def diverging_config(tiny_config):
    """An IRNN without clipping under SGD: one good step, then the loss explodes to inf/nan."""
    c = tiny_config
    c.model.cell = "relu_rnn"
    c.model.recurrent_init = "identity"
    c.model.init_scale = 1.0
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.1
    c.optim.clip = "none"
    c.task.seq_len = 50
    c.train.steps = 20
    c.train.log_every = 1
    return c


def test_diverged_run_keeps_last_good_checkpoint_and_refuses_resume(tiny_config, tmp_path, capsys):
    cfg = diverging_config(tiny_config)
    cfg_file = write_config_file(cfg, tmp_path / "cfg.py")
    w = tmp_path / "run"
    code, err = cli_train(capsys, "--config", cfg_file, "--workdir", str(w))
    assert code == 0, err
    summary = wd.read_json(os.path.join(w, wd.SUMMARY))
    assert summary["status"] == "diverged", summary
    d, good = summary["diverged_step"], summary["last_good_step"]
    assert d >= 2 and good == d - 1 and max(summary["checkpoint_steps"]) == good
    assert all(r["step"] <= good for r in wd.read_jsonl(os.path.join(w, wd.METRICS)))
    state = final_state(cfg, w)  # the latest checkpoint: finite params of the last good step
    assert int(state["step"]) == good
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state["params"]))

    before = snapshot(w)
    code, err = cli_train(capsys, "--workdir", str(w), "--config.train.steps=40")
    assert_one_line_error(code, err, "diverged at step", str(d), f"step {good}", "new --workdir")
    assert snapshot(w) == before

    # Without summary.json (killed before writing it) the checkpoint itself says so.
    os.remove(os.path.join(w, wd.SUMMARY))
    before = snapshot(w)
    code, err = cli_train(capsys, "--workdir", str(w))
    assert_one_line_error(code, err, "diverged at step", str(d))
    assert snapshot(w) == before


# ----------------------------------------------------------------------------- bad input
@pytest.fixture
def done_run(tiny_config, tmp_path_factory):
    """A finished tiny run to damage: (workdir, config file, config)."""
    c = tiny_config
    c.checkpoint.every_steps = 10
    w = tmp_path_factory.mktemp("done")
    src = _DONE.get("dir")
    if src is None:
        src = str(tmp_path_factory.mktemp("done_src"))
        assert train_and_evaluate(c, src)["status"] == "completed"
        _DONE["dir"] = src
    shutil.rmtree(w)
    shutil.copytree(src, w)
    return w, write_config_file(c, w.parent / f"{w.name}.py"), c


_DONE = {}


def test_workdir_that_is_not_a_run(tmp_path, capsys, tiny_config):
    cfg_file = write_config_file(tiny_config, tmp_path / "cfg.py")
    w = tmp_path / "notes"
    w.mkdir()
    (w / "notes.txt").write_text("mine")
    before = snapshot(w)
    code, err = cli_train(capsys, "--config", cfg_file, "--workdir", str(w))
    assert_one_line_error(code, err, str(w), "not a run", "--workdir")
    code, err = cli_train(capsys, "--workdir", str(w))  # resume of something that is no run
    assert_one_line_error(code, err, str(w), "--config")
    assert snapshot(w) == before

    f = tmp_path / "file"
    f.write_text("x")
    code, err = cli_train(capsys, "--config", cfg_file, "--workdir", str(f))
    assert_one_line_error(code, err, str(f), "not a directory")
    code, err = cli_train(capsys, "--config", cfg_file, "--workdir", str(f / "run"))
    assert_one_line_error(code, err, str(f / "run"))
    assert f.read_text() == "x"


def test_checkpoint_of_a_different_model_shape(done_run, tmp_path, capsys):
    w, cfg_file, cfg = done_run
    other = cfg.copy_and_resolve_references()
    other.model.hidden_size = 16
    shutil.rmtree(w / wd.CHECKPOINTS)
    ckpt = Checkpointer(str(w / wd.CHECKPOINTS))  # a checkpoint of the H=16 model, at step 20
    state = init_state(build(resolve(other)), other.seed)
    ckpt.save(20, {**state, "step": jax.numpy.asarray(20, jax.numpy.int32)}, {"wall_time_s": 1.0})
    ckpt.close()
    os.remove(w / wd.SUMMARY)
    before = snapshot(w)
    code, err = cli_train(capsys, "--workdir", str(w), "--config.train.steps=30")
    assert_one_line_error(code, err, str(w / wd.CHECKPOINTS / "20"), "does not fit this model",
                          "--workdir")
    assert snapshot(w) == before

    # The usual way to get there, a shape override on resume, is refused by the config check.
    code, err = cli_train(capsys, "--workdir", str(w), "--config.model.hidden_size=16")
    assert_one_line_error(code, err, "model.hidden_size", "new --workdir")
    assert snapshot(w) == before


@pytest.mark.parametrize("victim", [wd.METRICS, wd.CHECKPOINTS, wd.CONFIG])
def test_unreadable_files_are_one_line_errors(done_run, capsys, victim):
    """A directory where a file is expected (or a file where a directory is) cannot be read or
    written even by root, unlike a chmod, so this runs everywhere."""
    w, cfg_file, cfg = done_run
    os.remove(w / wd.SUMMARY)
    p = w / victim
    if p.is_dir():
        shutil.rmtree(p)
        p.write_text("not a directory")
    else:
        os.remove(p)
        p.mkdir()
    before = snapshot(w)
    code, err = cli_train(capsys, "--config", str(cfg_file), "--workdir", str(w),
                          "--config.train.steps=30")
    assert_one_line_error(code, err, str(w))
    assert snapshot(w) == before


def test_damaged_json_files(done_run, capsys):
    w, cfg_file, cfg = done_run
    for name, needle in [(wd.SUMMARY, "delete it"), (wd.CONFIG, "damaged")]:
        p = w / name
        good = p.read_bytes()
        p.write_bytes(good[: len(good) // 2])
        before = snapshot(w)
        code, err = cli_train(capsys, "--workdir", str(w), "--config.train.steps=30") \
            if name == wd.SUMMARY else cli_train(capsys, "--config", str(cfg_file), "--workdir", str(w))
        assert_one_line_error(code, err, str(p), needle)
        assert snapshot(w) == before
        p.write_bytes(good)
    m = w / wd.METRICS
    lines = m.read_text().splitlines(keepends=True)
    m.write_text(lines[0] + "garbage\n" + "".join(lines[1:]))
    before = snapshot(w)
    code, err = cli_train(capsys, "--workdir", str(w), "--config.train.steps=30")
    assert_one_line_error(code, err, str(m), "line 2")
    assert snapshot(w) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes through chmod; the "
                    "file-type tests above cover the same error paths as root")
def test_permissions(done_run, capsys):
    w, cfg_file, cfg = done_run
    os.remove(w / wd.SUMMARY)
    os.chmod(w / wd.METRICS, 0o000)
    try:
        code, err = cli_train(capsys, "--workdir", str(w), "--config.train.steps=30")
        assert_one_line_error(code, err, str(w / wd.METRICS))
    finally:
        os.chmod(w / wd.METRICS, 0o644)
    os.chmod(w, 0o555)
    try:
        code, err = cli_train(capsys, "--workdir", str(w), "--config.train.steps=30")
        assert_one_line_error(code, err, str(w))
    finally:
        os.chmod(w, 0o755)
