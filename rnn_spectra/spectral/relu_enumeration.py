"""Exact fixed points of a ReLU Elman RNN ``h' = relu(W_s h + x W_x + b)`` under a constant input x.

The map is piecewise linear: on the region where the activation pattern is ``d`` (unit i on iff
``z_i = (W_s h + c)_i > 0``, ``c = x W_x + b``) it is ``h -> D (W_s h + c)`` with ``D = diag(d)``.
So every fixed point h* solves the linear system ``(I - D W_s) h = D c`` for its own pattern, and a
solution of that system is a fixed point of the RNN exactly when it reproduces the pattern (units on
have ``z > 0``, units off have ``z <= 0``). There are 2^H patterns; we try those seen along
trajectories (``patterns_from_states``), which is where the optimiser of ``fixed_points.py`` looks
too. All linear algebra here is float64 numpy: the answer is exact up to rounding, a reference for
the float32 optimiser.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rnn_spectra.backend import single_threaded_blas
from rnn_spectra.errors import SpectralInputError

RELU_CELLS = ("relu_rnn", "irnn")  # ReLU Elman cells: params W_s (H, H), W_x (D, H), b (H,)


def eig_by_modulus(J: np.ndarray, k_vec: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of each (n, n) matrix in J (M, n, n), sorted by |lambda| descending: (M, n)
    complex, and the eigenvectors of the leading ``k_vec`` as columns: (M, n, k_vec) complex."""
    J = np.asarray(J, np.float64)
    m, n = J.shape[0], J.shape[-1]
    if m == 0:
        return np.zeros((0, n), complex), np.zeros((0, n, k_vec), complex)
    with single_threaded_blas():
        w, v = np.linalg.eig(J)
    order = np.argsort(-np.abs(w), axis=1, kind="stable")
    w = np.take_along_axis(w, order, axis=1).astype(complex)
    v = np.take_along_axis(v, order[:, None, :], axis=2).astype(complex)
    return w, v[:, :, :k_vec]


@dataclasses.dataclass(frozen=True)
class ReluFixedPoints:
    """Fixed points of a ReLU RNN found by enumerating activation patterns (float64).

    ``points`` (M, H) unique fixed points; ``patterns`` (M, H) bool, which units are on at each;
    ``jacobians`` (M, H, H) = ``D W_s``, the map's Jacobian inside the point's region;
    ``eigenvalues`` (M, H) complex, sorted by |lambda| descending; ``num_unstable`` (M,) count of
    |lambda| > 1 + eps. Counts: ``num_tried`` distinct patterns tried, ``num_singular`` of them whose
    system ``I - D W_s`` is singular (a continuum of fixed points or none; skipped), ``num_found``
    whose solution reproduced its own pattern (before de-duplication: a point on a region boundary
    solves two patterns' systems).
    """

    points: np.ndarray
    patterns: np.ndarray
    jacobians: np.ndarray
    eigenvalues: np.ndarray
    num_unstable: np.ndarray
    num_tried: int
    num_singular: int
    num_found: int

    def as_dict(self, prefix: str = "fp_relu/") -> dict[str, np.ndarray]:
        """Every field as a numpy array under ``prefix + name`` (for ``np.savez``)."""
        return {prefix + f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _check_relu_args(W_s, W_x, b, x, patterns):
    W_s, W_x, b, x = (np.asarray(a, np.float64) for a in (W_s, W_x, b, x))
    if W_s.ndim != 2 or W_s.shape[0] != W_s.shape[1]:
        raise SpectralInputError(f"W_s must be a square (H, H) matrix, got shape {W_s.shape}")
    h = W_s.shape[0]
    if W_x.ndim != 2 or W_x.shape[1] != h:
        raise SpectralInputError(f"W_x must have shape (D, {h}) to match W_s, got {W_x.shape}")
    if b.shape != (h,):
        raise SpectralInputError(f"b must have shape ({h},) to match W_s, got {b.shape}")
    if x.shape != (W_x.shape[0],):
        raise SpectralInputError(f"x must have shape ({W_x.shape[0]},) (input size of W_x), got {x.shape}")
    patterns = np.asarray(patterns)
    if patterns.ndim != 2 or patterns.shape[1] != h or patterns.shape[0] < 1:
        raise SpectralInputError(f"patterns must have shape (P, {h}) with P >= 1, got {patterns.shape}")
    if not all(np.all(np.isfinite(a)) for a in (W_s, W_x, b, x)):
        raise SpectralInputError("W_s, W_x, b and x must be finite (found NaN or inf)")
    return W_s, W_x, b, x, patterns.astype(bool)


def _unique_rows(points: np.ndarray, tol: float) -> np.ndarray:
    """Indices of the first point of each cluster of points within ``tol`` (Euclidean) of each other,
    in input order (callers order by preference)."""
    keep: list[int] = []
    for i in range(points.shape[0]):
        if not keep or np.min(np.linalg.norm(points[keep] - points[i], axis=1)) > tol:
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def _batched_inverse(m: np.ndarray) -> np.ndarray:
    """Inverses of a stack of matrices (C, H, H); an exactly singular one becomes all-NaN."""
    try:
        return np.linalg.inv(m)
    except np.linalg.LinAlgError:  # numpy refuses the whole stack; redo one by one
        out = np.full_like(m, np.nan)
        for i, mi in enumerate(m):
            try:
                out[i] = np.linalg.inv(mi)
            except np.linalg.LinAlgError:
                pass
        return out


def enumerate_relu_fixed_points(W_s, W_x, b, x, patterns, *, rcond: float = 1e-10, tol: float = 1e-9,
                                tol_unique: float = 1e-6, eps: float = 0.01,
                                chunk: int = 256) -> ReluFixedPoints:
    """Every fixed point of ``h -> relu(W_s h + x W_x + b)`` whose activation pattern is in ``patterns``.

    W_s (H, H) math orientation, W_x (D, H), b (H,), x (D,) the constant input, patterns (P, H) bool
    (duplicates are dropped). For each pattern d: solve ``(I - D W_s) h = D c`` (``c = x W_x + b``);
    skip it as singular when the 1-norm condition number of ``I - D W_s`` exceeds ``1 / rcond``; keep
    h if the pre-activation ``z = W_s h + c`` has the pattern's signs (within ``tol`` relative to the
    size of the terms of z). Solutions within ``tol_unique`` are merged.
    ``eps``: |lambda| > 1 + eps counts as unstable. Work is in chunks of ``chunk`` patterns,
    O(chunk H^2) memory.
    """
    W_s, W_x, b, x, patterns = _check_relu_args(W_s, W_x, b, x, patterns)
    h = W_s.shape[0]
    patterns = np.unique(patterns, axis=0)
    c = x @ W_x + b
    eye = np.eye(h)
    found_h, found_d, num_singular = [], [], 0
    for start in range(0, patterns.shape[0], chunk):
        d = patterns[start:start + chunk].astype(np.float64)  # (C, H)
        m = eye - d[:, :, None] * W_s  # I - D W_s: rows of units that are off are e_i (h_i = 0)
        with single_threaded_blas():
            inv = _batched_inverse(m)
        # Singular: 1-norm condition number above 1/rcond (an inverse costs ~1/4 of an SVD).
        with np.errstate(over="ignore", invalid="ignore"):
            cond = np.abs(m).sum(axis=1).max(axis=1) * np.abs(inv).sum(axis=1).max(axis=1)
        ok = np.isfinite(cond) & (cond < 1.0 / rcond)
        num_singular += int(np.sum(~ok))
        if not np.any(ok):
            continue
        rhs = d[ok] * c
        sol = np.einsum("kij,kj->ki", inv[ok], rhs)  # (C', H)
        # One step of iterative refinement: the explicit inverse loses a little accuracy.
        sol += np.einsum("kij,kj->ki", inv[ok], rhs - np.einsum("kij,kj->ki", m[ok], sol))
        z = sol @ W_s.T + c
        # Rounding in z scales with the size of the terms summed into it, not with z itself.
        scale = 1.0 + np.abs(sol) @ np.abs(W_s).T + np.abs(c)
        on = d[ok] > 0
        signs_ok = np.all(np.where(on, z > -tol * scale, z <= tol * scale), axis=1)
        # h = relu(z): implied by the signs for an exact solve; fails when the solve was inaccurate.
        fixed_ok = np.all(np.abs(np.maximum(z, 0.0) - sol) <= 1e-6 * scale, axis=1)
        good = signs_ok & fixed_ok
        found_h.append(sol[good])
        found_d.append(on[good])
    points = np.concatenate(found_h) if found_h else np.zeros((0, h))
    pats = np.concatenate(found_d) if found_d else np.zeros((0, h), bool)
    num_found = points.shape[0]
    keep = _unique_rows(points, tol_unique)
    points, pats = points[keep].reshape(-1, h), pats[keep].reshape(-1, h)
    jac = pats[:, :, None] * W_s[None]  # D W_s
    eigenvalues, _ = eig_by_modulus(jac)
    num_unstable = np.sum(np.abs(eigenvalues) > 1.0 + eps, axis=1)
    return ReluFixedPoints(points, pats, jac, eigenvalues, num_unstable,
                           int(patterns.shape[0]), num_singular, num_found)


def patterns_from_states(states, W_s=None, W_x=None, b=None, x=None) -> np.ndarray:
    """Distinct activation patterns (P, H) bool of hidden states (..., H) of a ReLU RNN.

    Always each state's own pattern ``h > 0`` (the region the cell's last step landed in). With the
    weights and the constant input x also the pattern one step ahead under x, ``W_s h + x W_x + b
    > 0``: the region the map under x is in at h, which is the one that matters for a fixed point
    of that map near h.
    """
    states = np.asarray(states, np.float64)
    states = states.reshape(-1, states.shape[-1])
    pats = [states > 0]
    if W_s is not None:
        c = np.asarray(x, np.float64) @ np.asarray(W_x, np.float64) + np.asarray(b, np.float64)
        z = states @ np.asarray(W_s, np.float64).T + c
        pats.append(z > 0)
    return np.unique(np.concatenate(pats), axis=0)


def relu_fixed_points(model, cell_params, states, x=None, **kwargs) -> ReluFixedPoints:
    """``enumerate_relu_fixed_points`` for a ``SequenceModel`` of a ReLU Elman cell (relu_rnn, irnn),
    trying the patterns of ``states`` (..., H) (hidden states, e.g. from ``model.unroll``) under the
    constant input ``x`` (D,) (default zeros). ``kwargs`` go to ``enumerate_relu_fixed_points``."""
    cell = model.config.cell
    if cell not in RELU_CELLS:
        raise SpectralInputError(
            f"exact enumeration needs a ReLU Elman cell ({', '.join(RELU_CELLS)}); got cell {cell!r} "
            "(use find_fixed_points for any cell)")
    missing = {"W_s", "W_x", "b"} - set(cell_params)
    if missing:
        raise SpectralInputError(
            f"cell params of {cell!r} must have W_s, W_x and b; missing {sorted(missing)}")
    W_s, W_x, b = (np.asarray(cell_params[k], np.float64) for k in ("W_s", "W_x", "b"))
    x = np.zeros(W_x.shape[0]) if x is None else np.asarray(x, np.float64)
    states = np.asarray(states)
    if states.ndim < 1 or states.shape[-1] != W_s.shape[0]:
        raise SpectralInputError(
            f"states must have shape (..., {W_s.shape[0]}) (hidden size), got {states.shape}")
    if x.shape != (W_x.shape[0],):
        raise SpectralInputError(f"x must have shape ({W_x.shape[0]},) (input_size), got {x.shape}")
    pats = patterns_from_states(states, W_s, W_x, b, x)
    return enumerate_relu_fixed_points(W_s, W_x, b, x, pats, **kwargs)
