"""What every cell shares: the step contract, the pre-activation tag and ``CellSpec``.

Every cell is one step: ``cell.apply({"params": p}, carry, x_BxD) -> (carry, h_BxH)``; sequences
are unrolled by ``jax.lax.scan`` in ``model.py``. Recurrent matrices are stored in *math
orientation* (``W_s`` maps h to the pre-activation: ``h' = phi(W_s h + W_x x + b)``), so the
per-step Jacobian of an Elman cell is ``diag(phi') @ W_s`` and ``recurrent_matrices`` returns
exactly the matrices whose spectra the theory talks about.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Initializer = Callable[..., Array]

# Each cell tags the output of its recurrent matmul(s) with this name. Outside ``jax.checkpoint``
# the tag does nothing; ``model.SequenceModel`` checkpoints its scan step with a policy that saves
# only these arrays, so the backward pass keeps one (B, G*H) array per step instead of every gate
# activation and recomputes the cheap element-wise part (fewer, smaller stores: faster on CPU).
PREACTIVATION = "rnn_preactivation"


class ZeroCarry:
    """Mixin for cells whose carry is h alone: ``initialize_carry`` gives zeros (*batch, H)."""

    def initialize_carry(self, batch_shape: tuple[int, ...]) -> Array:
        return jnp.zeros((*batch_shape, self.hidden_size))


@dataclasses.dataclass(frozen=True)
class ParamRule:
    """What the optimizer does to one named param of a cell after the common update.

    ``lr_factor(optim_config)``: this param's update is scaled by it (expRNN's skew generator);
    ``abs_bound(seq_len)``: the param is projected onto ``|p| <= bound`` after every update
    (IndRNN's recurrent weights). ``optim.make_optimizer`` turns rules into masked Optax stages,
    so the optimizer never needs to know a cell's name or its params' names."""

    param: str
    lr_factor: Callable[[Any], float] | None = None
    abs_bound: Callable[[int], float] | None = None


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """How to build one registered cell; defaults apply when the config leaves them unset.

    ``matrices(cell_params, **kwargs) -> {name: (H, H)}``: the recurrent matrices when they are
    derived from the params (constrained cells); None: ``W_s`` sliced into ``gates``.
    ``options``: the ``config.model`` keys the module takes as fields (LSTM: forget_bias;
    AntisymmetricRNN: epsilon, gamma), passed to it and to ``matrices``."""

    module: type[nn.Module]
    gates: tuple[str, ...]  # names of the (H, H) recurrent blocks, in stacking order
    default_recurrent_init: str
    default_init_scale: float
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    matrices: Callable[..., dict[str, Array]] | None = None
    param_rules: tuple[ParamRule, ...] = ()
    program: str | None = None  # another cell that is the same compiled program (irnn: relu_rnn)
    options: tuple[str, ...] = ()
    skew_params: tuple[str, ...] = ()  # (H, H) params of which only the antisymmetric part is used
    # The cell with W_s = U diag(1 + margin tanh p) V^T instead of a free W_s (model.recurrent_param
    # = svd_margin); set for the cells whose W_s is one square param the step uses as it is, which
    # is also what control.max_singular_value projects.
    margin_module: type[nn.Module] | None = None
