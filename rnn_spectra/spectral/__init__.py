"""Spectral measurements of recurrent nets: why a ReLU RNN, a tanh RNN, an LSTM or a GRU learns a
long-range task or fails.

A *state* is the flattened carry (LSTM: c and h concatenated), a 1-D array of size n; a *step
function* is ``step_fn(s, x) -> s_next``. ``make_step_fn(model, cell_params)`` builds it for any
registered cell. All logs are natural logs.

    cs = make_step_fn(model, params["cell"])
    J = step_jacobians(cs.step_fn, cs.s0, xs_TxD)          # (T, n, n), J[t] = ds_{t+1}/ds_t
    P = jacobian_products(J)                               # (T, n, n), P[t] = ds_T/ds_t
    log_sv = product_log_singular_values(J)                # (T, n), stable for any T
    lam = lyapunov_spectrum(cs.step_fn, cs.s0, xs_TxD, k=8)  # (8,), nats per step
    lam = lyapunov_spectrum(cs.step_fn, cs.s0, xs_TxD, k=8, discard=16)  # after a burn-in
    norms = step_norms(cs.step_fn, cs.s0, xs_TxD)          # (T,), ||ds_{t+1}/ds_t||_2
"""

from rnn_spectra.dynamics import CellStep, make_step_fn
from rnn_spectra.errors import SpectralInputError
from rnn_spectra.spectral.fixed_points import (
    FixedPoints,
    analyze_points,
    candidates_from_trajectories,
    find_fixed_points,
    fixed_points_of_run,
)
from rnn_spectra.spectral.gradient_flow import gradient_flow, model_gradient_flow
from rnn_spectra.spectral.relu_enumeration import (
    ReluFixedPoints,
    enumerate_relu_fixed_points,
    patterns_from_states,
    relu_fixed_points,
)
from rnn_spectra.spectral.jacobians import (
    dead_prefix,
    jacobian_products,
    jacobian_products_at_lags,
    lag_log_norms,
    log_spaced_lags,
    step_jacobian_stats,
    step_jacobians,
    step_norms,
    trajectory,
)
from rnn_spectra.spectral.lyapunov import (
    kaplan_yorke_dimension,
    lyapunov_from_jacobians,
    lyapunov_spectrum,
    near_zero_count,
)
from rnn_spectra.spectral.matrices import matrix_spectrum, singular_values, spectral_radius
from rnn_spectra.spectral.product_spectrum import product_log_singular_values

__all__ = [
    "CellStep", "SpectralInputError", "make_step_fn",
    "trajectory", "step_jacobians", "jacobian_products", "jacobian_products_at_lags",
    "lag_log_norms", "log_spaced_lags", "product_log_singular_values",
    "step_jacobian_stats", "step_norms", "dead_prefix",
    "lyapunov_spectrum", "lyapunov_from_jacobians", "near_zero_count", "kaplan_yorke_dimension",
    "gradient_flow", "model_gradient_flow",
    "matrix_spectrum", "spectral_radius", "singular_values",
    "FixedPoints", "find_fixed_points", "analyze_points", "candidates_from_trajectories",
    "fixed_points_of_run", "ReluFixedPoints", "enumerate_relu_fixed_points",
    "patterns_from_states", "relu_fixed_points",
]
