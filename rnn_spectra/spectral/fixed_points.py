"""Fixed points and slow points of an RNN under a constant input (Sussillo & Barak 2013).

Minimise the speed ``q(s) = 1/2 ||F(s, x) - s||^2`` from many candidate states at once: Adam
(one jitted loop, all candidates vmapped, stopped early when every candidate has converged or
stalled), then damped Gauss-Newton (Levenberg-Marquardt) steps, since q is a least-squares
objective and Newton-type steps take q from the ~1e-6 where Adam jitters to ~1e-12 in a handful of
steps. ``q <= tol_q`` is a fixed point; ``tol_q < q <= slow_q`` a slow point (a local minimum of the
speed that is not zero: the dynamics linger there). Each unique fixed point gets its Jacobian
``dF/ds`` and eigenvalues (|lambda| > 1: unstable directions; lambda ~ 1: a line attractor).

For ReLU Elman cells ``relu_enumeration`` finds the fixed points exactly, a reference for this.

    cs = make_step_fn(model, params["cell"])
    fps = find_fixed_points(cs.step_fn, jnp.zeros(cs.input_size), candidates_KxN)
    fps.points, fps.eigenvalues, fps.num_unstable
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from rnn_spectra.dynamics import make_step_fn
from rnn_spectra.errors import SpectralInputError
from rnn_spectra.spectral.relu_enumeration import (  # noqa: F401 - re-exported
    RELU_CELLS,
    ReluFixedPoints,
    _unique_rows,
    eig_by_modulus,
    enumerate_relu_fixed_points,
    patterns_from_states,
    relu_fixed_points,
)

Array = jax.Array
StepFn = Callable[[Array, Array], Array]


@dataclasses.dataclass(frozen=True)
class FixedPoints:
    """What ``find_fixed_points`` found (numpy arrays; K candidates, M unique fixed points, n state size).

    Per candidate: ``all_points`` (K, n) where its minimisation ended, ``all_q`` (K,) the speed
    there, ``converged`` (K,) q <= tol_q, ``slow`` (K,) tol_q < q <= slow_q.
    Per unique fixed point (converged candidates merged within tol_unique, lowest q kept, sorted by
    q): ``points`` (M, n), ``q`` (M,), ``jacobians`` (M, n, n) dF/ds, ``eigenvalues`` (M, n) complex
    sorted by |lambda| descending, ``eigenvectors`` (M, n, k_vec) of the leading k_vec eigenvalues
    (columns), ``num_unstable`` (M,) count of |lambda| > 1 + eps, ``line_attractor`` (M,) some
    |lambda - 1| <= eps and every other |lambda| < 1.
    Unique slow points likewise: ``slow_points`` (S, n), ``slow_q`` (S,).
    """

    points: np.ndarray
    q: np.ndarray
    all_points: np.ndarray
    all_q: np.ndarray
    converged: np.ndarray
    slow: np.ndarray
    jacobians: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    num_unstable: np.ndarray
    line_attractor: np.ndarray
    slow_points: np.ndarray
    slow_q: np.ndarray

    def as_dict(self, prefix: str = "fp/") -> dict[str, np.ndarray]:
        """Every field as a numpy array under ``prefix + name`` (for ``np.savez``)."""
        return {prefix + f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}


def analyze_points(step_fn: StepFn, x, points, *, eps: float = 0.01, k_vec: int = 3) -> dict[str, np.ndarray]:
    """Linearisation at each point of ``points`` (M, n) under input x (D,): ``jacobians`` (M, n, n)
    = dF/ds (``jax.jacfwd``), ``eigenvalues`` (M, n) complex by |lambda| descending (float64 eig),
    ``eigenvectors`` (M, n, min(k_vec, n)), ``num_unstable`` (M,) |lambda| > 1 + eps,
    ``line_attractor`` (M,) bool: some |lambda - 1| <= eps and all the others |lambda| < 1."""
    points = jnp.asarray(points)
    m, n = points.shape
    k = min(k_vec, n)
    if m == 0:
        jac = np.zeros((0, n, n), np.asarray(points).dtype)
    else:
        jac = np.asarray(jax.jit(jax.vmap(jax.jacfwd(step_fn), in_axes=(0, None)))(points, jnp.asarray(x)))
    w, v = eig_by_modulus(jac, k)
    near_one = np.abs(w - 1.0) <= eps
    line = np.any(near_one, axis=1) & np.all(near_one | (np.abs(w) < 1.0), axis=1)
    return {"jacobians": jac, "eigenvalues": w, "eigenvectors": v,
            "num_unstable": np.sum(np.abs(w) > 1.0 + eps, axis=1), "line_attractor": line}


def _check_finder_args(step_fn, x, candidates, tols: dict[str, float]):
    for name, v in tols.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise SpectralInputError(f"{name} must be a finite number > 0, got {v!r}")
    if tols["slow_q"] < tols["tol_q"]:
        raise SpectralInputError(
            f"slow_q must be >= tol_q, got slow_q={tols['slow_q']!r} < tol_q={tols['tol_q']!r}")
    x = jnp.asarray(x)
    candidates = jnp.asarray(candidates)
    if not jnp.issubdtype(candidates.dtype, jnp.floating):
        candidates = candidates.astype(jnp.float32)
    if x.ndim != 1:
        raise SpectralInputError(f"x must be one constant input step of shape (D,), got shape {x.shape}")
    if candidates.ndim != 2:
        raise SpectralInputError(
            f"candidates must have shape (K, n) (K states of size n), got {candidates.shape}")
    if candidates.shape[0] < 1:
        raise SpectralInputError(
            f"need at least one candidate: candidates must be (K, n) with K >= 1, got {candidates.shape}")
    n = candidates.shape[1]
    try:
        out = jax.eval_shape(step_fn, jax.ShapeDtypeStruct((n,), candidates.dtype),
                             jax.ShapeDtypeStruct(x.shape, x.dtype))
    except SpectralInputError as e:  # a CellStep's own check names the shape it wants
        raise SpectralInputError(
            f"candidates (K, {n}) / x {tuple(x.shape)} do not fit the step function: {e}") from None
    except Exception as e:  # noqa: BLE001 - any trace error means the shapes do not fit
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpectralInputError(
            f"step_fn does not accept a state of shape ({n},) (candidates (K, {n})) with x of shape "
            f"{tuple(x.shape)}: {first}") from None
    if getattr(out, "shape", None) != (n,):
        raise SpectralInputError(
            f"step_fn maps a state of shape ({n},) to shape {getattr(out, 'shape', out)}: candidates must be "
            "(K, n) with n the state size of step_fn")
    if not (bool(jnp.all(jnp.isfinite(candidates))) and bool(jnp.all(jnp.isfinite(x)))):
        raise SpectralInputError("candidates and x must be finite (found NaN or inf)")
    return x.astype(candidates.dtype), candidates


def _minimize(step_fn, x, s0, opt, steps, chunk, tol_q, refine_steps, stall):
    """Adam (``opt``) from every row of s0 (K, n), then Levenberg-Marquardt; returns (s, q)."""
    def resid(s):
        return step_fn(s, x) - s

    def q_fn(s):
        r = resid(s)
        return 0.5 * jnp.vdot(r, r)

    grad_q = jax.vmap(jax.value_and_grad(q_fn))
    q_all = jax.vmap(q_fn)

    def adam_step(carry, _):
        s, st = carry
        _, g = grad_q(s)
        upd, st = jax.vmap(opt.update)(g, st, s)  # per candidate: no coupling through the optimizer
        return (optax.apply_updates(s, upd), st), None

    def chunk_body(c):
        i, s, st, best_s, best_q, _ = c
        (s, st), _ = jax.lax.scan(adam_step, (s, st), None, length=chunk)
        q = q_all(s)
        better = q < best_q  # False for NaN: a diverged candidate keeps its best state
        new_q = jnp.where(better, q, best_q)
        # Still worth running: not converged and the best q fell by more than ``stall`` this chunk.
        active = (new_q > tol_q) & (new_q < (1.0 - stall) * best_q)
        return i + 1, s, st, jnp.where(better[:, None], s, best_s), new_q, active

    q0 = q_all(s0)
    init = (0, s0, jax.vmap(opt.init)(s0), s0, q0, q0 > tol_q)
    n_chunks = -(-steps // chunk)
    _, _, _, s, q, _ = jax.lax.while_loop(lambda c: (c[0] < n_chunks) & jnp.any(c[5]), chunk_body, init)

    # Levenberg-Marquardt on r(s) = F(s) - s: delta = -(J^T J + mu tr(J^T J)/n I)^-1 J^T r, accepted
    # only when q falls (so it never undoes Adam), mu shrinking on success and growing on failure.
    jac_r = jax.vmap(jax.jacfwd(resid))
    n = s0.shape[1]
    eye = jnp.eye(n, dtype=s0.dtype)
    q_floor = tol_q * 1e-4

    def lm_body(c):
        i, s, q, mu = c
        r, J = jax.vmap(resid)(s), jac_r(s)
        jtj = jnp.einsum("kij,kil->kjl", J, J)
        damp = mu * (jnp.trace(jtj, axis1=1, axis2=2) / n + 1e-12)
        grad = jnp.einsum("kij,ki->kj", J, r)  # J^T r, the gradient of q
        delta = jnp.linalg.solve(jtj + damp[:, None, None] * eye, -grad[..., None])[..., 0]
        s_new = s + delta
        q_new = q_all(s_new)
        ok = q_new < q
        return (i + 1, jnp.where(ok[:, None], s_new, s), jnp.where(ok, q_new, q),
                jnp.where(ok, jnp.maximum(mu * 0.1, 1e-9), mu * 10.0))

    def lm_cond(c):
        i, _, q, mu = c
        return (i < refine_steps) & jnp.any((q > q_floor) & (mu < 1e8))

    mu0 = jnp.full(q.shape, 1e-3, s0.dtype)
    _, s, q, _ = jax.lax.while_loop(lm_cond, lm_body, (0, s, q, mu0))
    return s, q


def find_fixed_points(step_fn: StepFn, x, candidates, *, tol_q: float = 1e-9, tol_unique: float = 1e-3,
                      slow_q: float = 1e-4, steps: int = 2000, learning_rate: float = 1e-2,
                      optimizer: optax.GradientTransformation | None = None, chunk: int = 100,
                      refine_steps: int = 20, stall: float = 0.01, eps: float = 0.01,
                      k_vec: int = 3) -> FixedPoints:
    """Fixed and slow points of ``s -> step_fn(s, x)`` found from every row of ``candidates`` (K, n).

    x (D,): the constant input (usually zeros). Adam (``learning_rate``; or any ``optimizer``,
    applied per candidate) runs at most ``steps`` steps (rounded up to whole chunks), checked every
    ``chunk`` steps: it stops once every candidate has q <= tol_q or improved its best q by less
    than a fraction ``stall`` over the last chunk. Then up to ``refine_steps`` Levenberg-Marquardt
    steps (0: none). Converged candidates (q <= tol_q) are merged within Euclidean distance
    ``tol_unique`` and analysed by ``analyze_points`` (``eps``, ``k_vec``); see ``FixedPoints``.
    A candidate that diverges (NaN) keeps its best finite state. ``step_fn`` may also be a
    ``CellStep`` (its ``.step_fn`` is used). Each call traces and compiles one program for its step
    function and sizes (~1 s on CPU).
    """
    step_fn = getattr(step_fn, "step_fn", step_fn)  # a CellStep
    for name, v in {"steps": steps, "chunk": chunk}.items():
        if not (isinstance(v, int) and v >= 1):
            raise SpectralInputError(f"{name} must be an integer >= 1, got {v!r}")
    if not (isinstance(refine_steps, int) and refine_steps >= 0):
        raise SpectralInputError(f"refine_steps must be an integer >= 0, got {refine_steps!r}")
    x, candidates = _check_finder_args(step_fn, x, candidates, {
        "tol_q": tol_q, "tol_unique": tol_unique, "slow_q": slow_q,
        "learning_rate": learning_rate, "eps": eps})
    opt = optax.adam(learning_rate) if optimizer is None else optimizer
    run = jax.jit(lambda s0: _minimize(step_fn, x, s0, opt, steps, min(chunk, steps), tol_q,
                                       refine_steps, stall))
    s, q = (np.asarray(a) for a in run(candidates))
    q = np.where(np.isfinite(q), q, np.inf)
    converged, slow = q <= tol_q, (q > tol_q) & (q <= slow_q)

    def unique(mask):
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(q[idx], kind="stable")]
        idx = idx[_unique_rows(s[idx], tol_unique)] if idx.size else idx
        return s[idx].reshape(-1, s.shape[1]), q[idx]

    points, pq = unique(converged)
    slow_points, sq = unique(slow)
    info = analyze_points(step_fn, x, points, eps=eps, k_vec=k_vec)
    return FixedPoints(points=points, q=pq, all_points=s, all_q=q, converged=converged, slow=slow,
                       slow_points=slow_points, slow_q=sq, **info)


def candidates_from_trajectories(states, num: int, noise, key) -> Array:
    """``num`` candidate states (num, n): states drawn from ``states`` (..., n) (e.g. time-major
    (T, B, n) trajectories, or (K, n)) without replacement when there are enough, plus Gaussian
    noise of standard deviation ``noise`` (state units): a scalar, or one per unit (n,)."""
    states = jnp.asarray(states)
    if states.ndim < 2 or states.shape[-1] < 1:
        raise SpectralInputError(
            f"states must have shape (..., n) with a leading sample axis, got {states.shape}")
    states = states.reshape(-1, states.shape[-1])
    if not (isinstance(num, int) and num >= 1) or states.shape[0] < 1:
        raise SpectralInputError(
            f"need num >= 1 candidates from >= 1 states, got num={num!r} and {states.shape[0]} states")
    noise_arr = np.asarray(noise, dtype=np.float64)
    if noise_arr.ndim > 1 or (noise_arr.ndim == 1 and noise_arr.shape[0] != states.shape[1]) \
            or not np.all(np.isfinite(noise_arr)) or np.any(noise_arr < 0):
        raise SpectralInputError(f"noise must be a finite standard deviation >= 0 (a scalar or one "
                                 f"per unit, ({states.shape[1]},)), got {noise!r}")
    noise = jnp.asarray(noise_arr, states.dtype)
    k_pick, k_noise = jax.random.split(key)
    idx = jax.random.choice(k_pick, states.shape[0], (num,), replace=num > states.shape[0])
    return states[idx] + noise * jax.random.normal(k_noise, (num, states.shape[1]), states.dtype)


def fixed_points_of_run(model, params, inputs_BxTxD, *, num_candidates: int = 256, noise: float | None = None,
                        x=None, key=None, **finder_kwargs) -> dict[str, np.ndarray]:
    """Fixed points of a ``SequenceModel`` with ``params`` near the states it visits on ``inputs_BxTxD``.

    Candidates: ``num_candidates`` of the flat states (LSTM: c and h) along the unroll, plus
    Gaussian noise (``noise``; default 0.1 x each unit's standard deviation over the visited states,
    so a unit that never moves, e.g. a ReLU unit that never fires, gets none: with noise there, an
    IRNN's unused units, whose W_s rows stay near the identity, hold it and fake eigenvalues of 1
    at every point found). x (D,):
    the constant input (default zeros). ``finder_kwargs`` go to ``find_fixed_points``. For ReLU
    Elman cells also the exact enumeration over the activation patterns of the visited states and of
    the optimiser's end points. Returns numpy arrays for ``np.savez``: ``fp/<FixedPoints field>``,
    ``fp_relu/<ReluFixedPoints field>`` (ReLU cells only), ``states`` (N, n) the states used, ``x``.
    """
    cs = make_step_fn(model, params["cell"])
    inputs = jnp.asarray(inputs_BxTxD)
    if inputs.ndim != 3 or inputs.shape[-1] != cs.input_size or inputs.shape[0] * inputs.shape[1] < 1:
        raise SpectralInputError(
            f"inputs must have shape (B, T, {cs.input_size}) with B, T >= 1, got {inputs.shape}")
    x = jnp.zeros(cs.input_size, cs.s0.dtype) if x is None else jnp.asarray(x)
    _, carries = model.unroll(params["cell"], inputs, return_carries=True)
    flat = jax.vmap(jax.vmap(lambda c: ravel_pytree(c)[0]))(carries)  # (T, B, n), dynamics.make_step_fn's order
    states = jnp.concatenate([cs.s0[None], flat.reshape(-1, cs.state_size)])
    bad = int(jnp.sum(~jnp.isfinite(states)))
    if bad:
        raise SpectralInputError(
            f"the states visited on these inputs are not finite ({bad} of {states.size} values "
            "infinite or NaN): the parameters blow the state up, so there are no fixed points "
            "near the visited states to find")
    if noise is None:
        noise = 0.1 * np.asarray(jnp.std(states, axis=0))
    key = jax.random.PRNGKey(0) if key is None else key
    cand = candidates_from_trajectories(states, num_candidates, noise, key)
    fps = find_fixed_points(cs.step_fn, x, cand, **finder_kwargs)
    out = {**fps.as_dict("fp/"), "states": np.asarray(states), "x": np.asarray(x)}
    if model.config.cell in RELU_CELLS:
        ends = fps.all_points[fps.converged | fps.slow]
        relu = relu_fixed_points(model, params["cell"], np.concatenate([np.asarray(states), ends]), x)
        out.update(relu.as_dict("fp_relu/"))
    return out
