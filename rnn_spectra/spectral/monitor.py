"""The spectral monitor of a training run: one JSON row per measurement in WORKDIR/spectra.jsonl.

``loop.py`` builds ``SpectralMonitor(exp)`` once and calls ``measure(params, step)`` every
``spectral.every`` steps. The array part, ``measure_arrays(params)``, is one pure jitted function
of the params only (the probe batch is fixed at construction), so a sweep can ``jax.vmap`` it
over the stacked params of many members and compile it once.

Row keys (natural logs throughout; "state" is the flattened carry, LSTM: c and h):

- ``sv/<M>``: singular values of each recurrent (H, H) matrix M (``W_s``, or one per gate:
  ``W_i W_f W_g W_o`` / ``W_r W_z W_n``), descending; for H > 1024 ``sv_top/<M>`` and
  ``sv_bottom/<M>`` (64 each) instead. ``spectral_radius/<M>``: max |eigenvalue|.
  For gated cells these are per gate: no one of them is the matrix of Pascanu's bound, which
  ``step_norm/*`` measures instead.
- ``lags``: the lags k; ``jac_log_norm/per_probe`` (B, L): ``ln ||ds_T/ds_{T-k}||_2`` for each
  probe sequence; ``jac_log_norm/mean`` (L,): its mean over the probe sequences. A lag that
  reaches back into the probe's dead prefix (below) measures ``ds_T/ds_t0`` instead, from its
  first live step t0 (``jacobians.lag_log_norms(start=t0)``), so the full lag is finite.
- ``dead_prefix/per_probe`` (B,): t0, the number of leading steps whose state Jacobian is exactly
  zero. A ReLU-type cell (relu_rnn, irnn, indrnn, exprnn's modReLU) with zero bias stays at the
  zero state while the input is zero (JAX's relu'(0) = 0: the leading blank pixels of an image),
  and through those steps nothing passes, though nothing of the sequence has arrived yet either.
  0 for every other cell.
- The measurement window of each probe is steps ``start .. T-1`` with ``lyapunov/start/per_probe``
  (B,) ``= min(t0 + lyapunov/discard, T - 1)``: the dead prefix and then a burn-in of
  ``lyapunov/discard`` = round(``spectral.lyapunov_discard`` x T) steps are pushed through but
  not counted. Over the window:
- ``lyapunov/per_probe`` (B, k) and ``lyapunov/mean`` (k,): the top k Lyapunov exponents, nats per
  step (``spectral.lyapunov_discard=0`` and no dead prefix: from step 0, the numbers of before
  issue #14).
- ``lyapunov_window/per_probe`` (B, k), ``/mean`` (k,), ``lyapunov_window/steps`` [discard_w, T_w]:
  only in a run with the Lyapunov regulariser on (``control.lyapunov.weight > 0``) whose window
  is not the one above (``control.lyapunov.seq_len`` < T, or another burn-in): the top k
  exponents over steps discard_w .. T_w - 1 of each probe, the window the regulariser steers
  (``regularised_window``).
- ``lyapunov/near_zero/per_probe`` (B,), ``/mean``: how many exponents lie within
  ``lyapunov/near_zero_tol`` (0.01) of zero: directions that carry gradient over long lags;
  ``lyapunov/kaplan_yorke/per_probe`` (B,), ``/mean``: the Kaplan-Yorke dimension. Both from the
  full spectrum, all n exponents, computed by a second QR scan over the same window
  (``lyapunov/computed`` = n; for n > 1024 from the top k only, and then lower bounds).
  ``lyapunov/full_probes``: how many probes that full spectrum covers: all of them up to
  n = ``EXACT_MAX`` (96), above it the first probe only (its numbers exactly; the per_probe
  arrays then have one entry and ``/mean`` is that probe's value).
- ``step_norm/per_probe`` (B,), ``/mean``: the time-averaged spectral norm of the effective
  one-step state Jacobian ``||ds_{t+1}/ds_t||_2`` (the factor in Pascanu's bound, for every cell,
  gates included); ``step_norm/max``: its largest value over the window and the probes.
  ``step_norm/method``: ``svd`` (exact) up to n = ``EXACT_MAX``; above it ``lanczos16``: 16
  Lanczos steps on ``J^T J`` from a fixed random start, a lower bound on each step's norm,
  within 3e-2 of the SVD at every step and 2e-3 for the window mean in the tests (on the
  default tanh and LSTM runs at H = 128, init and trained, the window mean was within 1.2e-3).
- ``dead_units/per_probe`` (B,), ``/mean``: the fraction of state components whose row of the
  step Jacobian is all zero (dead: no gradient passes through them), over the window;
  ``zero_steps/per_probe`` (B,), ``/mean``: the fraction of all T steps whose Jacobian is exactly
  zero (the dead prefix included).
  Cost: exactly, the per-step SVDs (~57%) and the full spectrum's (n, n) QRs (~35%) dominate a
  measurement (4 probes, T = 100, 2-core CPU: tanh H = 128 0.51 s, LSTM H = 128 3.4 s); the
  approximations above ``EXACT_MAX`` cut it about 3.5x (README, "What the monitor costs").
- ``grad_flow/t`` (P,): 1-based time steps t; ``grad_flow/log_norm`` (P,): ``ln ||dL/dS_t||`` of
  the task loss on the whole probe batch (S_t the (B, n) states), subsampled to at most
  ``spectral.grad_flow_points`` evenly spaced steps (always the first and the last).
- ``probe_loss``: the task loss on the probe batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rnn_spectra.backend import single_threaded_blas
from rnn_spectra.cells import get_cell_spec, recurrent_matrices
from rnn_spectra.errors import ConfigError
from rnn_spectra.parallel import to_host
from rnn_spectra.dynamics import make_step_fn, state_size
from rnn_spectra.spectral.gradient_flow import model_gradient_flow
from rnn_spectra.spectral.jacobians import (
    lag_log_norms, log_spaced_lags, measurement_window, step_jacobian_stats, trajectory,
    window_summary,
)
from rnn_spectra.spectral.lyapunov import (
    NEAR_ZERO, kaplan_yorke_dimension, lyapunov_spectrum, near_zero_count,
)
from rnn_spectra.spectral.matrices import spectral_radius
from rnn_spectra.rng import PROBE_STREAM, stream_key

FULL_SV_MAX = 1024  # up to this H every singular value is recorded; above, the 64 extremes
SV_EXTREMES = 64
FULL_LYAPUNOV_MAX = 1024  # up to this state size the whole Lyapunov spectrum is computed
# Up to this state size n the step norms are SVDs and the full spectrum covers every probe; above
# it, Lanczos step norms and the full spectrum of the first probe only (module docstring). 96
# keeps every CPU study preset exact (H = 32, the LSTM's n = 64, the parameter-matched cells'
# H ~ 66), where a measurement costs a few tens of ms anyway.
EXACT_MAX = 96
LANCZOS_STEPS = 16  # mean step norm within ~1e-3 of the SVD's on the default runs (README)


def probe_batch(exp, batch_size: int | None = None):
    """The run's fixed probe batch (inputs_BxTxD, targets), from its own PRNG stream.

    Drawn by one jitted program that derives the key from the seed itself, bit for bit the
    numbers of drawing it eagerly (tests/test_spectral.py): eagerly, every random primitive
    compiles on its own at every start, each too small for the persistent compilation cache.
    Compiled with XLA's default options it takes long enough to compile for that cache to keep
    it (without backend optimizations it fell just under the cache's threshold and compiled at
    every start). Compiled ahead of time, it runs on concrete arrays even when first called
    inside a trace (a monitor used under jit or vmap), so nothing is evaluated at compile time
    around it (under ``jax.ensure_compile_time_eval`` its lowering ran every constant op
    eagerly, each compiled on its own). README, "What the monitor costs", has the timings."""
    size = batch_size or exp.run.spectral.probe_batch_size
    # PRNGKey turns a Python int into jnp.asarray(np.int64(seed)): the same array, made on the host.
    seed = np.asarray(np.int64(exp.run.seed)).astype(jax.dtypes.canonicalize_dtype(np.int64))
    draw = jax.jit(lambda s: exp.task.batch(stream_key(s, PROBE_STREAM), size))
    return draw.lower(seed).compile()(seed)


def flow_points(T: int, points: int) -> np.ndarray:
    """0-based time indices of the gradient-flow profile: all T, or ``points`` evenly spaced."""
    if T <= points:
        return np.arange(T)
    return np.unique(np.round(np.linspace(0, T - 1, points)).astype(np.int64))


def sequence_measurements(cs, xs, lags, discard: int, k: int, full_k: int | None = None,
                          norm_steps: int | None = None) -> dict:
    """The monitor's per-sequence arrays for one input sequence ``xs`` (T, D) of the CellStep
    ``cs`` (see the module docstring): ``jac`` (L,) at ``lags``, ``lyap`` (k,), ``t0`` (dead
    prefix), ``start``, ``near_zero``, ``kaplan_yorke`` (from the top ``full_k`` exponents, default
    all n; ``full_k=0``: neither, see ``full_spectrum_summary``) and ``window_summary``'s
    ``step_norm``, ``step_norm_max``, ``dead_units``, ``zero_steps`` (``norm_steps``: the step
    norms by that many Lanczos steps, not SVDs). Pure and jittable; the monitor vmaps it over
    the probe batch."""
    T, full_k = xs.shape[0], cs.state_size if full_k is None else full_k
    barrier = jax.lax.optimization_barrier
    states = trajectory(cs.step_fn, cs.s0, xs)  # shared by every measurement
    stats = step_jacobian_stats(cs.step_fn, cs.s0, xs, states=states,
                                norm_steps=norm_steps)  # T SVDs (or T small eigvalsh)
    t0, start = measurement_window(stats["zero"], discard)
    states, t0, start = barrier((states, t0, start, stats))[:3]
    jac = lag_log_norms(cs.step_fn, cs.s0, xs, lags, states=states,
                        start=jnp.minimum(t0, T - 1))  # L SVDs
    # The Lyapunov QRs (the initial frame's too, through its key) only after them: the recorded
    # top k with the k-frame of before (discard 0 and no dead prefix: the same numbers), then the
    # whole spectrum for the summaries (k = n: explicit Jacobians are the cheaper push).
    states, key, start, _ = barrier((states, jax.random.PRNGKey(0), start, jac))
    lyap = lyapunov_spectrum(cs.step_fn, cs.s0, xs, k, method="jvp", states=states, key=key,
                             discard=start)
    out = {"jac": jac, "lyap": lyap, "t0": t0, "start": start,
           **window_summary(stats, start, cs.state_size)}
    if full_k == 0:
        return out
    full = lyap
    if full_k > k:
        states, key, start, _ = barrier((states, key, start, lyap))
        full = lyapunov_spectrum(cs.step_fn, cs.s0, xs, full_k, method="jacobian", states=states,
                                 key=key, discard=start)
    return {**out, "near_zero": near_zero_count(full), "kaplan_yorke": kaplan_yorke_dimension(full)}


def full_spectrum_summary(cs, xs, start, full_k: int) -> dict:
    """``near_zero`` and ``kaplan_yorke`` of one sequence ``xs`` (T, D) from its top ``full_k``
    exponents over steps ``start .. T-1``: ``sequence_measurements``' numbers for that sequence,
    computed on their own (the monitor's one-probe full spectrum above ``EXACT_MAX``)."""
    states = trajectory(cs.step_fn, cs.s0, xs)
    full = lyapunov_spectrum(cs.step_fn, cs.s0, xs, full_k, method="jacobian", states=states,
                             key=jax.random.PRNGKey(0), discard=start)
    return {"near_zero": near_zero_count(full), "kaplan_yorke": kaplan_yorke_dimension(full)}


def regularised_window(run, T: int, discard: int) -> tuple[int, int] | None:
    """(T_w, discard_w) of the Lyapunov regulariser's window (``control.lyapunov``) where the run
    regularises and that window is not the monitor's own (T steps after ``discard``), else None.
    There the monitor also records lambda on that window (``lyapunov_window/*``), from the zero
    state of each probe without the dead-prefix skip, as the regulariser counts it: a regulariser
    that steers the first 50 steps of a T = 200 sequence is then read on what it steered too."""
    lc = run.control.lyapunov
    if lc.weight <= 0:
        return None
    window = lc.window(T)
    return None if window == (T, discard) else window


class SpectralMonitor:
    """``measure(params, step) -> row`` (a JSON-able dict); ``measure_arrays(params) -> arrays``.

    ``measure_arrays`` is jitted; ``host_arrays(params, members)`` maps it over stacked members
    (``sweep.Stacking.map``: one compiled program); ``to_row(host_arrays, step)`` turns one
    member's arrays into its row.
    """

    def __init__(self, exp, exact: bool | None = None):
        """``exact``: SVD step norms and the full spectrum on every probe (None: for a state size
        up to ``EXACT_MAX``)."""
        sp, model = exp.run.spectral, exp.model
        self.exp, self.model, self.task = exp, model, exp.task
        self.cell = model.config.cell
        self._probe = None  # (inputs, targets), drawn on first use
        T = exp.task.length
        self.state_size = state_size(model)
        if sp.lyapunov_k > self.state_size:
            raise ConfigError(
                f"spectral.lyapunov_k={sp.lyapunov_k} exceeds the state size n={self.state_size} of "
                f"cell {self.cell!r} (hidden_size={model.config.hidden_size}); "
                f"set --config.spectral.lyapunov_k to at most {self.state_size}"
            )
        self.k = sp.lyapunov_k
        self.T = T
        self.discard = int(round(sp.lyapunov_discard * T))  # burn-in steps after the dead prefix
        self.control_window = regularised_window(exp.run, T, self.discard)
        self.full_k = self.state_size if self.state_size <= FULL_LYAPUNOV_MAX else self.k
        self.exact = self.state_size <= EXACT_MAX if exact is None else bool(exact)
        self.norm_steps = None if self.exact else LANCZOS_STEPS
        self.full_probes = sp.probe_batch_size if self.exact or self.full_k <= self.k else 1
        self.lags = log_spaced_lags(T, sp.num_lags)
        self.flow_t = flow_points(T, sp.grad_flow_points)
        self.gates = get_cell_spec(self.cell).gates
        self.measure_arrays = jax.jit(self._arrays)
        self._over_members = None  # measure_arrays mapped over the members, compiled once

    @property
    def probe(self):
        """The probe batch (inputs, targets), drawn on first use."""
        if self._probe is None:
            self._probe = probe_batch(self.exp)
        return self._probe

    inputs = property(lambda self: self.probe[0])
    targets = property(lambda self: self.probe[1])

    def host_arrays(self, params, members=None) -> dict:
        """``measure_arrays(params)`` as host numpy arrays; with ``members`` (the
        ``sweep.Stacking`` of stacked params), of every member at once."""
        fn = self.measure_arrays
        if members is not None:
            if self._over_members is None:
                self._over_members = jax.jit(members.map(self._arrays))
            fn = self._over_members
        with single_threaded_blas():  # held until the results are on the host
            return to_host(fn(params))

    def static(self) -> dict:
        """The row entries that never change during a run (axes of the arrays)."""
        return {"lags": self.lags.tolist(), "grad_flow/t": (self.flow_t + 1).tolist(),
                "lyapunov_k": self.k, "probe_batch_size": self.exp.run.spectral.probe_batch_size,
                "cell": self.cell, "lyapunov/discard": self.discard,
                "lyapunov/near_zero_tol": NEAR_ZERO, "lyapunov/computed": self.full_k,
                "lyapunov/full_probes": self.full_probes,
                "step_norm/method": "svd" if self.exact else f"lanczos{self.norm_steps}",
                **({"lyapunov_window/steps": [self.control_window[1], self.control_window[0]]}
                   if self.control_window is not None else {})}

    def _arrays(self, params) -> dict:
        # One LAPACK kernel at a time (optimization barriers chain them): jaxlib's CPU SVD/QR
        # split a batch over XLA's intra-op thread pool and block until it is done, so two such
        # kernels running side by side on a 2-thread pool wait for each other forever. Seen
        # twice on 2-core CPUs (a study hung in the monitor, both pool threads in
        # ParallelBatchMap -> BlockingCounter::Wait). Same numbers, nothing runs in parallel
        # that mattered: these are small matrices.
        out = {}
        hidden = self.model.config.hidden_size
        mats = recurrent_matrices(self.cell, params["cell"], self.model.config)
        svs = jnp.linalg.svd(jnp.stack(list(mats.values())), compute_uv=False)  # one kernel
        for (name, W), sv in zip(mats.items(), svs):
            if hidden <= FULL_SV_MAX:
                out[f"sv/{name}"] = sv
            else:
                out[f"sv_top/{name}"] = sv[:SV_EXTREMES]
                out[f"sv_bottom/{name}"] = sv[-SV_EXTREMES:]
            out[f"spectral_radius/{name}"] = spectral_radius(W)  # pure jnp, no LAPACK
        cell_params, _ = jax.lax.optimization_barrier((params["cell"], svs))
        cs = make_step_fn(self.model, cell_params)

        one_probe = self.full_probes < self.exp.run.spectral.probe_batch_size
        per = jax.vmap(lambda xs: sequence_measurements(
            cs, xs, self.lags, self.discard, self.k, 0 if one_probe else self.full_k,
            self.norm_steps))(self.inputs)
        if one_probe:  # after every LAPACK call above: the full spectrum of the first probe
            xs0, start0, _ = jax.lax.optimization_barrier((self.inputs[0], per["start"][0], per))
            per.update(jax.tree.map(lambda a: a[None], full_spectrum_summary(
                cs, xs0, start0, self.full_k)))
        if self.control_window is not None:  # after every LAPACK call above, as the full spectrum
            Tw, dw = self.control_window
            xs_w, _ = jax.lax.optimization_barrier((self.inputs[:, :Tw], per))
            lam_w = jax.vmap(lambda xs: lyapunov_spectrum(
                cs.step_fn, cs.s0, xs, self.k, method="jvp", key=jax.random.PRNGKey(0),
                discard=dw))(xs_w)
            out["lyapunov_window/per_probe"], out["lyapunov_window/mean"] = lam_w, jnp.mean(lam_w, 0)
        jac, lyap = per["jac"], per["lyap"]
        out["jac_log_norm/per_probe"], out["jac_log_norm/mean"] = jac, jnp.mean(jac, axis=0)
        out["lyapunov/per_probe"], out["lyapunov/mean"] = lyap, jnp.mean(lyap, axis=0)
        out["dead_prefix/per_probe"], out["lyapunov/start/per_probe"] = per["t0"], per["start"]
        for name in ("near_zero", "kaplan_yorke"):
            out[f"lyapunov/{name}/per_probe"] = per[name]
            out[f"lyapunov/{name}/mean"] = jnp.mean(per[name].astype(jnp.float32))
        for name in ("step_norm", "dead_units", "zero_steps"):
            out[f"{name}/per_probe"], out[f"{name}/mean"] = per[name], jnp.mean(per[name])
        out["step_norm/max"] = jnp.max(per["step_norm_max"])
        flow, loss = model_gradient_flow(self.model, params, self.inputs, self.targets, self.task.loss,
                                         return_loss=True)
        out["grad_flow/log_norm"] = jnp.log(flow[self.flow_t])
        out["probe_loss"] = loss
        return out

    def measure(self, params, step: int) -> dict:
        """One spectra.jsonl row for ``params`` at training step ``step``."""
        return self.to_row(self.host_arrays(params), step)

    def to_row(self, arrays: dict, step: int) -> dict:
        """The JSON row for host ``arrays`` of one run (a sweep slices its vmapped arrays)."""
        row = {"step": int(step), **self.static()}
        for key, value in arrays.items():
            value = np.asarray(value)
            row[key] = value.item() if value.ndim == 0 else value.tolist()
        return row
