"""Training: the pure, jittable pieces that ``loop.train_and_evaluate`` is built from.

The pieces (``build``, ``init_state``, ``make_train_step``, ``make_eval_fn``) are pure functions
of a ``RunConfig`` so ``loop.py`` can vmap them over the stacked members of a sweep. The train step
never crashes on a non-finite loss: it keeps the last good params and records the step in
``state["diverged_at"]``; the host reads that every ``log_every`` steps (no per-step sync).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from rnn_spectra import control
from rnn_spectra.cells import get_cell_spec
from rnn_spectra.config import RunConfig
from rnn_spectra.model import SequenceModel
from rnn_spectra.optim import learning_rate, make_optimizer
from rnn_spectra.parallel import Layout
from rnn_spectra.rng import DATA_STREAM, EVAL_STREAM, INIT_STREAM, TEST_STREAM, stream_key
from rnn_spectra.tasks import Task, get_task


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything built from a RunConfig that does not hold arrays."""

    run: RunConfig
    task: Task
    model: SequenceModel
    tx: optax.GradientTransformation
    schedule: optax.Schedule


def build(run: RunConfig, task: Task | None = None) -> Experiment:
    """Resolve every name of ``run`` (task, cell, inits, optimizer): bad names raise here.
    ``task``: one already built from ``run.task``, to share: an image task holds its dataset on
    the device, so the members of a sweep group (and a study's groups on one table) use one copy."""
    task = get_task(run.task) if task is None else task
    model = SequenceModel(run.model, task.input_size, task.output_size, task.readout,
                          seq_len=task.length)
    control.check(run, model)
    tx, schedule = make_optimizer(run.optim, run.train.steps, seq_len=task.length,
                                  rules=get_cell_spec(run.model.cell).param_rules,
                                  sv_bounds=control.sv_bounds(run))
    return Experiment(run, task, model, tx, schedule)


def init_state(exp: Experiment, seed: int | jax.Array) -> dict:
    """Training state pytree: params, opt_state, step, data key and the divergence marker (and,
    with the Lyapunov regulariser on, its weight and target: ``control.initial_state``)."""
    params = exp.model.init(stream_key(seed, INIT_STREAM))
    extra = {"control": control.initial_state(exp.run)} if control.regularised(exp.run) else {}
    return {
        "params": params,
        "opt_state": exp.tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "key": stream_key(seed, DATA_STREAM),
        # 1-based step whose loss or gradient was non-finite; -1 while the run is healthy.
        "diverged_at": jnp.full((), -1, jnp.int32),
        **extra,
    }


def make_train_step(exp: Experiment, tx: optax.GradientTransformation | None = None,
                    layout: Layout | None = None):
    """``train_step(state) -> (state, metrics)``; not jitted here so sweeps can vmap it first.

    ``layout`` (``parallel.py``): under data parallelism the batch, drawn inside the step, is
    constrained to be split over the devices; JAX inserts the gradient all-reduce itself."""
    task, model, batch_size = exp.task, exp.model, exp.run.train.batch_size
    tx = tx or exp.tx
    shard_batch = layout.shard_batch if layout is not None else (lambda tree: tree)
    # Static: with weight 0 the regulariser is not traced, the program is the one without it.
    lyapunov = exp.run.control.lyapunov if control.regularised(exp.run) else None

    def loss_fn(params, inputs, targets, state):
        outputs = model.apply(params, inputs)
        loss, aux = task.loss(outputs, targets), {"outputs": outputs}
        if lyapunov is not None:
            penalty, lam = control.lyapunov_penalty(model, lyapunov, state["control"], params["cell"],
                                                    inputs, state["step"])
            loss, aux = loss + penalty, {**aux, "penalty": penalty, "lambdas": lam}
        return loss, aux

    def train_step(state):
        step = state["step"]
        inputs, targets = shard_batch(task.train_batch(state["key"], step, batch_size))
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], inputs, targets, state
        )
        outputs = aux["outputs"]
        grad_norm = optax.global_norm(grads)  # before clipping: the quantity the theory is about
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        healthy = state["diverged_at"] < 0
        keep_new = finite & healthy
        pick = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(keep_new, a, b), new, old)
        new_state = {
            "params": pick(params, state["params"]),
            "opt_state": pick(opt_state, state["opt_state"]),
            "step": step + 1,
            "key": state["key"],
            "diverged_at": jnp.where(healthy & ~finite, step + 1, state["diverged_at"]),
        }
        if lyapunov is not None:
            new_state["control"] = state["control"]
        metrics = task.metrics(outputs, targets)
        if lyapunov is not None:  # the task's loss stays "loss"; the total is loss + penalty
            metrics["control/lyapunov_penalty"] = aux["penalty"]
            metrics["control/lyapunov"] = aux["lambdas"]  # (k,), NaN at steps it is off
            metrics["control/lyapunov_1"] = aux["lambdas"][0]
        metrics["grad_norm"] = grad_norm
        metrics["learning_rate"] = learning_rate(state["opt_state"], exp.schedule, step)
        return new_state, metrics

    return train_step


def make_eval_fn(exp: Experiment, layout: Layout | None = None):
    """``eval_fn(params, seed=run.seed, stream=EVAL_STREAM, chunk=0) -> metrics`` on held-out data.

    One chunk is ``train.eval_batches`` fixed batches of the given stream: ``EVAL_STREAM`` is the
    validation set used during training (and for choosing hyperparameters in a sweep);
    ``TEST_STREAM`` is a separate set for the numbers a report quotes, made of as many chunks as
    wanted (``evaluate``) with the same compiled function. Means over batches, except metrics
    named ``max_*`` which take the max.
    """
    task, model, tr = exp.task, exp.model, exp.run.train
    shard_batch = layout.shard_batch if layout is not None else (lambda tree: tree)

    def eval_fn(params, seed=exp.run.seed, stream=EVAL_STREAM, chunk=0):
        key = stream_key(seed, stream)

        def one(i):
            inputs, targets = shard_batch(task.eval_batch(
                key, chunk * tr.eval_batches + i, tr.eval_batch_size, stream == TEST_STREAM))
            return task.metrics(model.apply(params, inputs), targets)

        per_batch = jax.lax.map(one, jnp.arange(tr.eval_batches))
        return reduce_metrics(per_batch, axis=0)

    return eval_fn


def reduce_metrics(stacked: dict, axis: int) -> dict:
    """Combine per-batch metrics: max for ``max_*``, mean otherwise (equal-sized batches)."""
    return {k: (jnp.max(v, axis) if k.startswith("max_") else jnp.mean(v, axis))
            for k, v in stacked.items()}


def evaluate(eval_fn, params, seed, stream: int, chunks: int) -> dict:
    """``chunks`` chunks of ``stream`` with one compiled ``eval_fn`` (works vmapped, too)."""
    parts = [eval_fn(params, seed, stream, c) for c in range(chunks)]
    return reduce_metrics({k: jnp.stack([p[k] for p in parts]) for k in parts[0]}, axis=0)


__all__ = [
    "Experiment", "build", "init_state", "make_train_step", "make_eval_fn", "evaluate",
    "reduce_metrics", "stream_key",
]
