"""scikit-learn's digits as a sequence task: the seeded split, the variants and the permutation,
per-epoch shuffling that resumes at the exact batch, the validation/test streams, a tiny run
that learns, and the study/report integration of the image tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_spectra import config as config_lib
from rnn_spectra import datasets
from rnn_spectra.config import TaskConfig
from rnn_spectra.config_files import load_config_file
from rnn_spectra.errors import ConfigError
from rnn_spectra.tasks import get_task
from rnn_spectra.train import build, init_state, make_eval_fn, make_train_step
from rnn_spectra.rng import EVAL_STREAM, TEST_STREAM


def _rows(a):
    """Rows of a 2-D array as a sorted list of bytes (a multiset to compare)."""
    a = np.ascontiguousarray(a, np.int64).reshape(a.shape[0], -1)
    return sorted(r.tobytes() for r in a)


def test_split_is_fixed_by_seed_and_partitions_the_dataset():
    from sklearn.datasets import load_digits

    a, b, c = datasets.digits_splits(0), datasets.digits_splits(0), datasets.digits_splits(1)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["test_labels"], c["test_labels"])
    sizes = [len(a[f"{s}_labels"]) for s in ("train", "valid", "test")]
    assert sizes == [1797 - 512 - 256, 256, 512]
    full = load_digits()
    both = np.concatenate([a[f"{s}_images"] for s in ("train", "valid", "test")]).reshape(1797, -1)
    labels = np.concatenate([a[f"{s}_labels"] for s in ("train", "valid", "test")])
    joined = np.concatenate([both, labels[:, None]], axis=1)
    ref = np.concatenate([full.images.reshape(1797, -1), full.target[:, None]], axis=1)
    assert _rows(joined) == _rows(ref)


def test_variants_and_the_permutation():
    seq = get_task(TaskConfig("digits", 64))
    rows = get_task(TaskConfig("digits", 8))
    perm = get_task(TaskConfig("digits", 64, permuted=True))
    assert (seq.input_size, rows.input_size, seq.output_size) == (1, 8, 10)
    x = np.asarray(seq.data.x_test)[..., 0]
    np.testing.assert_array_equal(np.asarray(rows.data.x_test).reshape(x.shape), x)
    np.testing.assert_array_equal(np.asarray(perm.data.x_test)[..., 0],
                                  x[:, np.random.RandomState(92916).permutation(64)])
    xb, _ = seq.eval_batch(None, 0, 3, test=True)
    assert float(jnp.max(xb)) <= 1.0 and float(jnp.min(xb)) >= 0.0 and float(jnp.max(xb)) == 1.0
    assert seq.baseline == pytest.approx(np.log(10), abs=0.01)  # nearly balanced classes
    with pytest.raises(ConfigError, match="64 .*8 "):
        get_task(TaskConfig("digits", 100))
    with pytest.raises(ConfigError, match="data_dir"):
        get_task(TaskConfig("digits", 64, data_dir="x"))
    with pytest.raises(ConfigError, match="permuted"):
        get_task(TaskConfig("adding", 10, permuted=True))


def test_epochs_shuffle_and_resume_at_the_exact_batch():
    task = get_task(TaskConfig("digits", 8))
    B, key = 100, jax.random.PRNGKey(3)
    per_epoch = task.steps_per_epoch(B)
    n = task.data.x_train.shape[0]
    assert per_epoch == n // B
    batch = jax.jit(lambda s: task.train_batch(key, s, B))
    epoch0 = [np.asarray(batch(jnp.asarray(s))[0]).reshape(B, -1) for s in range(per_epoch)]
    epoch1 = [np.asarray(batch(jnp.asarray(s + per_epoch))[0]).reshape(B, -1) for s in range(per_epoch)]
    train = np.asarray(task.data.x_train, np.float32).reshape(n, -1) * task.data.scale
    # One epoch draws every image at most once (the n % B left over are dropped).
    idx0 = [int(np.argmin(np.abs(train - r).sum(1))) for r in np.concatenate(epoch0)]
    assert len(set(idx0)) == per_epoch * B
    assert not np.array_equal(np.concatenate(epoch0), np.concatenate(epoch1))  # reshuffled
    # The batch of step s is a pure function of (key, s): a resumed run replays it exactly.
    np.testing.assert_array_equal(np.asarray(batch(jnp.asarray(per_epoch + 2))[0]).reshape(B, -1), epoch1[2])
    with pytest.raises(ConfigError, match="batch_size"):
        task.train_batch(key, 0, n + 1)


def _digits_config(tiny_config, **over):
    c = tiny_config.copy_and_resolve_references()
    c.task.name, c.task.seq_len = "digits", 8
    c.model.cell, c.model.hidden_size = "gru", 32
    c.optim.learning_rate = 1e-2
    c.train.batch_size, c.train.eval_batches, c.train.eval_batch_size = 32, 2, 128
    for k, v in over.items():
        section, leaf = k.split("__")
        c[section][leaf] = v
    return config_lib.resolve(c)


@pytest.mark.slow  # the batch-level property is test_epochs_shuffle_and_resume_at_the_exact_batch
def test_training_state_resumes_to_the_same_numbers(tiny_config):
    exp = build(_digits_config(tiny_config, model__hidden_size=8, train__batch_size=128))
    assert exp.task.steps_per_epoch(128) == 8
    step = jax.jit(make_train_step(exp))
    straight = init_state(exp, 0)
    for _ in range(12):  # crosses an epoch boundary
        straight, _ = step(straight)
    resumed = init_state(exp, 0)
    for _ in range(5):
        resumed, _ = step(resumed)
    resumed = jax.tree_util.tree_map(jnp.asarray, jax.device_get(resumed))  # as from a checkpoint
    for _ in range(7):
        resumed, _ = step(resumed)
    for a, b in zip(jax.tree_util.tree_leaves(straight), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def test_validation_and_test_streams_use_their_splits(tiny_config):
    exp = build(_digits_config(tiny_config, model__hidden_size=4))
    task = exp.task
    xv, yv = task.eval_batch(None, 1, 128, test=False)
    np.testing.assert_array_equal(yv, np.asarray(task.data.y_valid)[128:256])
    xt, yt = task.eval_batch(None, 5, 128, test=True)  # batch 5 wraps around the 512 test images
    np.testing.assert_array_equal(yt, np.asarray(task.data.y_test)[(640 + np.arange(128)) % 512])
    traced = jax.jit(lambda t: task.eval_batch(None, 5, 128, t))(jnp.asarray(True))
    np.testing.assert_array_equal(traced[0], xt)
    params = init_state(exp, 0)["params"]
    ev = jax.jit(make_eval_fn(exp))
    val, test = ev(params, 0, EVAL_STREAM, 0), ev(params, 0, TEST_STREAM, 0)
    assert float(val["loss"]) != float(test["loss"])


def test_a_tiny_run_learns_digits_above_chance(tiny_config):
    exp = build(_digits_config(tiny_config, train__steps=250))
    state = init_state(exp, 0)
    step = jax.jit(make_train_step(exp))
    for _ in range(exp.run.train.steps):
        state, _ = step(state)
    test = jax.jit(make_eval_fn(exp))(state["params"], 0, TEST_STREAM, 0)
    assert float(test["accuracy"]) > 0.6  # chance is 0.1
    assert float(test["loss"]) < 0.6 * exp.task.baseline


def test_study_presets_add_the_image_tasks_with_their_own_tables():
    from rnn_spectra.study.presets import PRESETS
    from rnn_spectra.study.grid import expand, member_config

    cpu = expand(PRESETS["cpu-full"])  # the cpu preset is adding only (issue #13's budget)
    tables = {m.table for m in cpu}
    assert {"digits_T64", "digits_perm_T64"} <= tables
    digits = [m for m in cpu if m.task == "digits"]
    assert {m.variant.cell for m in digits} >= {"indrnn", "antisymmetric", "exprnn", "lstm", "tanh_rnn"}
    # The constrained cells join the digits tables only; the synthetic grid is unchanged.
    assert not {m.variant.cell for m in cpu if m.task != "digits"} & {"indrnn", "antisymmetric", "exprnn"}
    cfgs = [config_lib.resolve(member_config(PRESETS["cpu-full"], m)) for m in digits[::7]]
    assert {c.task.permuted for c in cfgs} == {False, True} and {c.train.steps for c in cfgs} == {400}
    paper = {m.table for m in expand(PRESETS["paper"])}
    assert {"pixel_mnist_T784", "pixel_mnist_perm_T784"} <= paper
    # The shipped config file builds.
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "digits.py")
    assert build(config_lib.resolve(load_config_file(path))).task.length == 64


def test_report_accuracy_table():
    from rnn_spectra.study.report import accuracy_table

    rows = [dict(table="digits_T64", variant="gru/orthogonal/clip=none", test_accuracy_mean=0.91,
                 test_accuracy_sd=0.02),
            dict(table="digits_perm_T64", variant="gru/orthogonal/clip=none", test_accuracy_mean=0.8,
                 test_accuracy_sd=0.0),
            dict(table="adding_T50", variant="gru/orthogonal/clip=none", test_accuracy_mean=None)]
    lines = accuracy_table({"rows": rows})
    assert "| variant | digits_T64 | digits_perm_T64 |" in lines
    assert "| gru/orthogonal/clip=none | 91.0 ± 2.0 | 80.0 ± 0.0 |" in lines
    assert accuracy_table({"rows": rows[2:]}) == []
