"""``Checkpointer`` and the workdir files on their own: retention (last N plus the best eval, also
across a restart), the every-minutes clock, damaged checkpoints, and torn/damaged jsonl rows."""

from __future__ import annotations

import asyncio
import errno
import gc
import glob
import json
import os
import shutil
import sys
import time
import types

import jax
import numpy as np
import pytest

from rnn_spectra import workdir as wd
from rnn_spectra.checkpointing import Checkpointer, CheckpointWarning
from rnn_spectra.config import default_config, resolve
from rnn_spectra.errors import StorageError, WorkdirError
from rnn_spectra.train import build, init_state


@pytest.fixture(scope="module")
def state():
    """A real training state (params, Adam state, step, key, divergence marker) of a tiny LSTM."""
    c = default_config()
    c.model.cell, c.model.hidden_size, c.task.seq_len = "lstm", 8, 10  # tuple carry, 4 gates
    return init_state(build(resolve(c)), c.seed)


def at_step(state, step):
    """The state with its step counter and params marked by ``step``, so restores are traceable."""
    params = jax.tree_util.tree_map(lambda x: x + step, state["params"])
    return {**state, "params": params, "step": jax.numpy.asarray(step, jax.numpy.int32)}


def assert_same(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def saved(directory, state, steps, **kw):
    ckpt = Checkpointer(str(directory), **kw)
    for s in steps:
        ckpt.save(s, at_step(state, s), {"wall_time_s": float(s)})
    ckpt.close()
    return str(directory)


def test_restore_is_exact_including_optimizer_state_and_key(state, tmp_path):
    ckpt = Checkpointer(str(tmp_path / "c"))
    ckpt.save(7, at_step(state, 7), {"wall_time_s": 1.5, "best_eval_loss": None})
    ckpt.wait()
    got, meta = ckpt.restore(state)
    ckpt.close()
    assert_same(got, at_step(state, 7))
    assert meta == {"wall_time_s": 1.5, "best_eval_loss": None}


def test_keeps_last_n_plus_best_eval_also_after_a_restart(state, tmp_path):
    d = str(tmp_path / "c")
    losses = {2: 0.1, 4: 0.5, 6: 0.9}  # evaluated steps; step 2 is the best
    ckpt = Checkpointer(d, keep=2)
    for s in range(1, 7):
        ckpt.save(s, at_step(state, s), {}, metrics={"eval_loss": losses[s]} if s in losses else None)
    ckpt.wait()
    assert ckpt.steps() == [2, 5, 6]
    ckpt.close()
    # A resumed run must not lose the best one on its first saves.
    ckpt = Checkpointer(d, keep=2)
    for s in (7, 8, 9):
        ckpt.save(s, at_step(state, s), {})
    ckpt.wait()
    assert ckpt.steps() == [2, 8, 9]
    assert_same(ckpt.restore(state, step=2)[0], at_step(state, 2))
    ckpt.save(10, at_step(state, 10), {}, metrics={"eval_loss": 0.05})  # a new best replaces it
    ckpt.save(11, at_step(state, 11), {})
    ckpt.save(12, at_step(state, 12), {}, metrics={"eval_loss": float("nan")})  # never "best"
    ckpt.wait()
    assert ckpt.steps() == [10, 11, 12]
    ckpt.close()


def test_every_minutes_and_every_steps(state, tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("rnn_spectra.checkpointing.time.monotonic", lambda: clock[0])
    ckpt = Checkpointer(str(tmp_path / "c"), every_minutes=1.5)
    assert not ckpt.due(1)
    clock[0] += 89
    assert not ckpt.due(2)
    clock[0] += 2
    assert ckpt.due(3)
    ckpt.save(3, at_step(state, 3), {})
    assert not ckpt.due(4)  # the clock restarts at each save
    clock[0] += 91
    assert ckpt.due(5)
    ckpt.close()
    ckpt = Checkpointer(str(tmp_path / "d"), every_steps=10)
    assert [s for s in range(1, 31) if ckpt.due(s)] == [10, 20, 30]
    ckpt.close()
    ckpt = Checkpointer(str(tmp_path / "e"))  # neither: only the loop's final/interrupt saves
    clock[0] += 1e6
    assert not any(ckpt.due(s) for s in range(1, 100))
    ckpt.close()


def _truncate_state(step_dir):
    for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True):
        if os.path.isfile(f):
            os.truncate(f, os.path.getsize(f) // 2)


def _half_written(step_dir):
    # A step directory that never got its arrays: only the top-level metadata was copied.
    shutil.rmtree(os.path.join(step_dir, "state"))


def _torn_meta(step_dir):
    os.truncate(os.path.join(step_dir, "meta", "metadata"), 3)


def _empty_dir(step_dir):
    shutil.rmtree(step_dir)
    os.makedirs(step_dir)


@pytest.mark.parametrize("damage", [_truncate_state, _half_written, _torn_meta, _empty_dir])
def test_damaged_latest_falls_back_to_previous_with_a_warning(state, tmp_path, damage):
    d = saved(tmp_path / "c", state, [1, 2, 3])
    damage(os.path.join(d, "3"))
    ckpt = Checkpointer(d)
    with pytest.warns(CheckpointWarning) as record:
        got, meta = ckpt.restore(state)
    assert_same(got, at_step(state, 2))
    assert meta == {"wall_time_s": 2.0}
    messages = [str(r.message) for r in record]
    assert any(f"skipping damaged checkpoint {os.path.join(d, '3')}:" in m for m in messages)
    assert any(f"moved damaged {os.path.join(d, '3')} to {d}.damaged" in m for m in messages)
    # The resumed run writes step 3 again; the damaged copy is kept aside, not deleted.
    assert ckpt.steps() == [1, 2] and os.path.isdir(os.path.join(d + ".damaged", "3"))
    assert ckpt.save(3, at_step(state, 3), {"wall_time_s": 3.0})
    ckpt.wait()
    assert_same(ckpt.restore(state)[0], at_step(state, 3))
    ckpt.close()


def test_no_good_checkpoint_is_a_clear_error_and_moves_nothing(state, tmp_path):
    d = saved(tmp_path / "c", state, [1, 2])
    for s in (1, 2):
        _torn_meta(os.path.join(d, str(s)))
    ckpt = Checkpointer(d)
    with pytest.warns(CheckpointWarning), pytest.raises(WorkdirError) as e:
        ckpt.restore(state)
    assert str(e.value).startswith(f"no readable checkpoint in {d} (tried steps [2, 1]")
    assert "new --workdir" in str(e.value)
    assert ckpt.steps() == [1, 2] and not os.path.exists(d + ".damaged")
    ckpt.close()
    with pytest.raises(WorkdirError, match="no checkpoints in"):
        Checkpointer(str(tmp_path / "empty")).restore(state)


def test_torn_metrics_file_does_not_lock_out_the_other_checkpoints(state, tmp_path):
    """Orbax reads every step's metrics when it opens the directory; one torn file must not
    make the whole run unresumable. Only the ranking is set aside; the arrays still restore."""
    d = str(tmp_path / "c")
    ckpt = Checkpointer(d)
    for s in (1, 2):
        ckpt.save(s, at_step(state, s), {}, metrics={"eval_loss": 1.0 / s})
    ckpt.close()
    os.truncate(os.path.join(d, "2", "metrics", "metrics"), 3)
    with pytest.warns(CheckpointWarning, match=f"damaged checkpoint metrics {d}/2/metrics"):
        ckpt = Checkpointer(d)
    assert ckpt.steps() == [1, 2]
    assert_same(ckpt.restore(state)[0], at_step(state, 2))
    ckpt.close()


def test_unfinished_save_of_a_killed_process_is_ignored_and_cleaned(state, tmp_path):
    d = saved(tmp_path / "c", state, [1, 2])
    tmp = os.path.join(d, "3.orbax-checkpoint-tmp-1234")
    shutil.copytree(os.path.join(d, "2"), tmp)
    ckpt = Checkpointer(d)
    assert ckpt.steps() == [1, 2]
    assert ckpt.save(3, at_step(state, 3), {})
    ckpt.close()
    assert not os.path.exists(tmp)
    assert sorted(os.listdir(d)) == ["1", "2", "3"]


def test_checkpoint_directory_that_is_a_file(tmp_path):
    f = tmp_path / "checkpoints"
    f.write_text("mine")
    with pytest.raises(WorkdirError, match=f"{f} exists but is not a directory"):
        Checkpointer(str(f))
    assert f.read_text() == "mine"


# ----------------------------------------------------------------------------- jsonl files
def test_jsonl_torn_tail_is_ignored_and_truncation_drops_later_rows(tmp_path):
    p = str(tmp_path / "m.jsonl")
    wd.append_jsonl(p, [{"step": s, "loss": s / 3} for s in (5, 10, 15)])
    with open(p, "a") as f:
        f.write('{"step": 20, "lo')  # killed mid-write
    assert [r["step"] for r in wd.read_jsonl(p)] == [5, 10, 15]
    wd.truncate_jsonl(p, 10)
    assert wd.read_jsonl(p) == [{"step": 5, "loss": 5 / 3}, {"step": 10, "loss": 10 / 3}]
    with open(p) as f:
        assert f.read().endswith("}\n")  # the torn tail is gone, so appends start on a new line
    before = os.stat(p).st_mtime_ns
    wd.truncate_jsonl(p, 10)  # nothing to drop: the file is not rewritten
    assert os.stat(p).st_mtime_ns == before
    wd.truncate_jsonl(str(tmp_path / "absent.jsonl"), 3)
    assert not os.path.exists(tmp_path / "absent.jsonl")


def test_jsonl_damaged_row_in_the_middle_is_an_error_not_a_silent_cut(tmp_path):
    p = str(tmp_path / "m.jsonl")
    with open(p, "wb") as f:
        f.write(b'{"step": 1}\n\xff\xfe not json\n{"step": 3}\n')
    with pytest.raises(WorkdirError, match=f"{p} line 2 is damaged"):
        wd.truncate_jsonl(p, 2)
    with open(p, "rb") as f:
        assert f.read().endswith(b'{"step": 3}\n')  # nothing rewritten


def test_write_json_is_atomic_and_reports_failures(tmp_path):
    p = str(tmp_path / "s.json")
    wd.write_json(p, {"loss": float("nan"), "x": np.float32(1.5)})
    assert json.load(open(p)) == {"loss": "nan", "x": 1.5}
    os.mkdir(tmp_path / "d.json")
    with pytest.raises(WorkdirError, match="cannot write"):
        wd.write_json(str(tmp_path / "d.json"), {})
    assert sorted(os.listdir(tmp_path)) == ["d.json", "s.json"]  # no temp file left behind


# ----------------------------------------------------------------------------- a full disk
def fail_saves_with_enospc(monkeypatch):
    """Orbax's JSON item writes (run in the background commit of an async save) raise ENOSPC
    while ``full["on"]``: the disk fills up after the arrays were handed to the saver."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh

    full, original = {"on": False}, jh.JsonCheckpointHandler._save_fn

    async def save_fn(self, x, directory):
        if full["on"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        return await original(self, x, directory)

    monkeypatch.setattr(jh.JsonCheckpointHandler, "_save_fn", save_fn)
    return full


@pytest.mark.parametrize("surfaced_by", ["next save", "wait", "poll"])
def test_a_failed_background_save_is_one_error_and_keeps_the_earlier_checkpoints(
        state, tmp_path, monkeypatch, capfd, surfaced_by):
    full = fail_saves_with_enospc(monkeypatch)
    d = str(tmp_path / "c")
    ckpt = Checkpointer(d)
    ckpt.save(1, at_step(state, 1), {"wall_time_s": 1.0})
    ckpt.wait()
    full["on"] = True
    ckpt.save(2, at_step(state, 2), {"wall_time_s": 2.0})  # returns: the commit runs in the background
    with pytest.raises(StorageError) as e:
        if surfaced_by == "next save":
            ckpt.save(3, at_step(state, 3), {"wall_time_s": 3.0})
        elif surfaced_by == "wait":
            ckpt.wait()
        else:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                ckpt.poll()
                time.sleep(0.01)
    msg = str(e.value)
    assert msg.startswith(f"cannot save checkpoint step 2 to {d}: No space left on device (")
    assert "free on that file system" in msg and "latest: step 1" in msg
    ckpt.close()  # does not raise the failure again
    full["on"] = False
    assert "Traceback" not in capfd.readouterr().err  # Orbax's logged tracebacks are dropped
    ckpt = Checkpointer(d)  # the earlier checkpoint is intact and restores exactly
    assert ckpt.steps() == [1]
    assert_same(ckpt.restore(state)[0], at_step(state, 1))
    ckpt.close()


def test_restoring_past_a_damaged_checkpoint_prints_no_event_loop_tracebacks(state, tmp_path,
                                                                            monkeypatch):
    """Orbax closes its event loop while TensorStore still reads the damaged checkpoint's other
    arrays; each read that completes later printed "Event loop is closed" with a traceback."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    # Incompressible values, so that the arrays span many data files and reads.
    noise = np.random.default_rng(0)
    state = jax.tree_util.tree_map(lambda x: x + noise.standard_normal(x.shape).astype(x.dtype)
                                   if x.dtype == np.float32 else x, state)
    d = saved(tmp_path / "c", state, [1, 2])
    # Only the arrays' data files are cut short: the metadata reads, and so do many array reads
    for f in glob.glob(os.path.join(d, "2", "state", "**", "d", "*"), recursive=True):
        os.truncate(f, os.path.getsize(f) // 2)
    ckpt = Checkpointer(d)
    with pytest.warns(CheckpointWarning, match="skipping damaged checkpoint"):
        got, _ = ckpt.restore(state)
    assert_same(got, at_step(state, 1))
    ckpt.close()
    time.sleep(0.5)  # the stray reads finish in TensorStore's threads
    _late_read_into_a_closed_event_loop()  # as they do when they finish late (timing-dependent)
    gc.collect()
    assert not [e for e in seen if "Event loop is closed" in str(e)], seen
    other = RuntimeError("something else")  # every other unraisable error still gets through
    sys.unraisablehook(types.SimpleNamespace(exc_value=other, exc_type=RuntimeError))
    assert seen[-1] is other


def _late_read_into_a_closed_event_loop():
    """What a TensorStore read that completes after Orbax closed its event loop does: its
    callback calls into the closed loop and the RuntimeError has nowhere to go but
    ``sys.unraisablehook``."""
    loop = asyncio.new_event_loop()
    loop.close()

    class Late:
        def __del__(self):
            loop.call_soon_threadsafe(lambda: None)

    Late()
