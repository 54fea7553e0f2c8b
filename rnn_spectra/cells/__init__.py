"""Recurrent cells: the one registry ``CELLS`` and what is built from it.

``CELLS[name]`` is a ``CellSpec`` (``base.py``): the Flax module (``classic.py``: Elman, LSTM,
GRU; ``constrained.py``: IndRNN, AntisymmetricRNN, expRNN), the names of its recurrent (H, H)
matrices, its default recurrent init (``inits.py``), and what it needs from the optimizer.
"""

from __future__ import annotations

import math

import flax.linen as nn

from rnn_spectra.cells.base import PREACTIVATION, Array, CellSpec, ParamRule
from rnn_spectra.cells.classic import (
    MARGIN_P, MARGIN_U, MARGIN_V, ElmanCell, GRUCell, LSTMCell, MarginElmanCell, margin_matrix,
)
from rnn_spectra.cells.constrained import (
    EXPRNN_SKEW, INDRNN_DIAG, AntisymmetricCell, ExpRNNCell, IndRNNCell, antisymmetric_matrices,
    exprnn_matrices, indrnn_bound, indrnn_matrices,
)
from rnn_spectra.cells.inits import (
    INPUT_INITS, RECURRENT_INITS, cayley_init, get_input_init, get_recurrent_init, henaff_init,
)
from rnn_spectra.config import ModelConfig
from rnn_spectra.errors import ConfigError, unknown_name

CELLS: dict[str, CellSpec] = {
    "tanh_rnn": CellSpec(ElmanCell, ("W_s",), "orthogonal", 1.0, {"activation": "tanh"},
                         margin_module=MarginElmanCell),
    "relu_rnn": CellSpec(ElmanCell, ("W_s",), "normal", 1.0, {"activation": "relu"},
                         margin_module=MarginElmanCell),
    "irnn": CellSpec(ElmanCell, ("W_s",), "identity", 1.0, {"activation": "relu"},
                     program="relu_rnn", margin_module=MarginElmanCell),
    "lstm": CellSpec(LSTMCell, ("W_i", "W_f", "W_g", "W_o"), "orthogonal", 1.0, options=("forget_bias",)),
    "gru": CellSpec(GRUCell, ("W_r", "W_z", "W_n"), "orthogonal", 1.0),
    # IndRNN's |u| <= 2^(1/T), T the input length, by a projection after every update; its init
    # u ~ U[2^(-1/T), 2^(1/T)] (init_scale = MAG = 2) is the official code's for the layer that
    # is read out (inits.indrnn_init).
    "indrnn": CellSpec(IndRNNCell, ("W_s",), "indrnn", 2.0, matrices=indrnn_matrices,
                       param_rules=(ParamRule(INDRNN_DIAG, abs_bound=indrnn_bound),)),
    # epsilon and gamma are config.model keys (their defaults there keep it stable at init).
    "antisymmetric": CellSpec(AntisymmetricCell, ("W_s",), "normal", 1.0,
                              matrices=antisymmetric_matrices, options=("epsilon", "gamma"),
                              skew_params=("W_s",)),
    # expRNN's skew generator A learns at orthogonal_lr_factor x the learning rate (Lezcano-Casado
    # 2019: 10x smaller).
    "exprnn": CellSpec(ExpRNNCell, ("W_s",), "henaff", 1.0, matrices=exprnn_matrices,
                       skew_params=(EXPRNN_SKEW,),
                       param_rules=(ParamRule(EXPRNN_SKEW,
                                              lr_factor=lambda optim: optim.orthogonal_lr_factor),)),
}


def get_cell_spec(name: str) -> CellSpec:
    if name not in CELLS:
        raise unknown_name("cell", name, CELLS)
    return CELLS[name]


def square_ws_cells() -> list[str]:
    """The cells whose W_s is one free square param (svd_margin and the W_s projection apply)."""
    return sorted(n for n, s in CELLS.items() if s.margin_module is not None)


def require_square_ws(name: str, what: str) -> CellSpec:
    """The spec of ``name``, or a one-line error: ``what`` needs a single square W_s."""
    spec = get_cell_spec(name)
    if spec.margin_module is None:
        raise ConfigError(f"{what} needs a cell with one square recurrent matrix W_s; valid: "
                          f"{', '.join(square_ws_cells())} (got model.cell={name!r})")
    return spec


# svd_margin: how model.recurrent_init starts U = exp(skew(A_U)) (V = I, W_s = init_scale * U).
# "orthogonal": a dense N(0, 1) generator, a rotation in random planes.
MARGIN_INITS = {
    "identity": lambda scale: nn.initializers.zeros,
    "orthogonal": lambda scale: nn.initializers.normal(stddev=1.0),
    "henaff": henaff_init,
    "cayley": cayley_init,
}


def _margin_cell(spec: CellSpec, config: ModelConfig, **kwargs) -> nn.Module:
    require_square_ws(config.cell, "model.recurrent_param=svd_margin")
    margin = config.margin
    if margin > 1:  # the section checks >= 0; above 1 a singular value could reach 0
        raise ConfigError(f"model.margin must be in [0, 1] (singular values in [1 - margin, "
                          f"1 + margin]), got {margin!r}")
    init = config.recurrent_init or ("identity" if spec.default_recurrent_init == "identity" else "orthogonal")
    if init not in MARGIN_INITS:
        raise ConfigError(f"model.recurrent_param=svd_margin starts from an orthogonal W_s: "
                          f"model.recurrent_init must be one of {', '.join(sorted(MARGIN_INITS))} "
                          f"(or None), got {init!r}")
    gain = 1.0 if config.init_scale is None else config.init_scale
    # init_scale is the gain of W_s at init: every singular value 1 + margin tanh(p0) = gain.
    if gain != 1.0 and not abs(gain - 1.0) < margin:
        raise ConfigError(f"model.init_scale={gain!r} is outside svd_margin's singular values "
                          f"(1 - margin, 1 + margin) with model.margin={margin!r}")
    p0 = math.atanh((gain - 1.0) / margin) if gain != 1.0 else 0.0
    return spec.margin_module(hidden_size=config.hidden_size, recurrent_init=MARGIN_INITS[init](1.0),
                              sv_init=nn.initializers.constant(p0), margin=float(margin),
                              **spec.kwargs, **kwargs)


def program_name(name: str) -> str:
    """The cell whose compiled program ``name`` shares (irnn trains as relu_rnn)."""
    return get_cell_spec(name).program or name


def cell_options(name: str, config=None) -> dict:
    """The ``config.model`` values (a ModelConfig; None: the defaults) that cell ``name`` takes
    beyond the common ones: ``{"forget_bias": ...}`` for the LSTM, ``{"epsilon", "gamma"}`` for
    AntisymmetricRNN, ``{}`` for the others."""
    spec = get_cell_spec(name)
    config = ModelConfig() if config is None else config
    return {k: getattr(config, k) for k in spec.options}


def make_cell(config: ModelConfig, seq_len: int | None = None) -> nn.Module:
    """Build the cell a (checked) ``config.model`` section names. Its ``recurrent_init`` and
    ``init_scale`` default to the cell's own; ``seq_len`` (the input length T) is what a
    T-dependent init needs (IndRNN's). ``recurrent_param="svd_margin"``: the cell's
    ``margin_module`` with singular values in [1 - margin, 1 + margin]."""
    spec = get_cell_spec(config.cell)
    input_init = get_input_init(config.input_init, config.input_scale)
    bias_init = nn.initializers.constant(config.bias_init)
    if config.recurrent_param == "svd_margin":
        return _margin_cell(spec, config, input_init=input_init, bias_init=bias_init)
    rec = get_recurrent_init(
        config.recurrent_init or spec.default_recurrent_init,
        spec.default_init_scale if config.init_scale is None else config.init_scale,
        seq_len=seq_len,
    )
    return spec.module(hidden_size=config.hidden_size, recurrent_init=rec, input_init=input_init,
                       bias_init=bias_init, **spec.kwargs, **cell_options(config.cell, config))


def recurrent_matrices(cell_name: str, cell_params, config=None) -> dict[str, Array]:
    """The cell's recurrent (H, H) matrices by name: {"W_s"} or one per gate (math orientation).
    ``config``: the run's ModelConfig, for the cells whose W_s depends on a setting
    (AntisymmetricRNN's gamma, svd_margin's margin); None: the defaults."""
    spec = get_cell_spec(cell_name)
    if MARGIN_P in cell_params and spec.margin_module is not None:  # svd_margin: U diag(s) V^T
        return {"W_s": margin_matrix(cell_params, (config or ModelConfig()).margin)}
    if spec.matrices is not None:  # W_s derived from the params (constrained cells)
        return spec.matrices(cell_params, **{**spec.kwargs, **cell_options(cell_name, config)})
    w_s = cell_params["W_s"]
    hidden = w_s.shape[-1]
    return {g: w_s[..., i * hidden : (i + 1) * hidden, :] for i, g in enumerate(spec.gates)}


# What the rest of the package uses; the modules and their building blocks stay in the submodules.
__all__ = [
    "CELLS", "CellSpec", "ParamRule", "PREACTIVATION", "RECURRENT_INITS", "INPUT_INITS",
    "MARGIN_P", "MARGIN_U", "MARGIN_V", "get_cell_spec", "make_cell", "recurrent_matrices",
    "program_name", "require_square_ws", "indrnn_bound",
]
