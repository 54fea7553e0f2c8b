"""SequenceModel: inputs -> registered cell under an explicit ``jax.lax.scan`` -> linear readout.

Not a linen module on purpose: the unroll is the object of study, so the scan is written out
here (``unroll=``, ``jax.checkpoint`` of the step) over ``cell.apply``, and params are a plain
dict ``{"cell": ..., "readout": {"kernel", "bias"}}`` that vmaps, differentiates and checkpoints
without wrappers.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnn_spectra import cells as cells_lib
from rnn_spectra.config import ModelConfig
from rnn_spectra.errors import ConfigError

Array = jax.Array
# Residuals of the scan's backward pass: the cells' tagged pre-activations (and the carries).
SAVE_PREACTIVATIONS = jax.checkpoint_policies.save_only_these_names(cells_lib.PREACTIVATION)


def default_unroll() -> int:
    """``model.unroll=0``: 8 time steps per loop iteration on accelerators, 1 on CPU.

    On a GPU the scan costs a fixed ~13 us per iteration whatever the work in it, so unrolling 8
    steps made the train step 2.2-2.3x faster on an H200 (benchmarks/bench_unroll.py; 16 adds
    another ~8% for more compile time); XLA:CPU gains little and compiles longer. The numbers
    agree to float32 rounding, not always to the bit (on CPU, unroll 8 of a vmapped group
    differed from 1 in the last bits after one step), so keep one factor to reproduce a run."""
    return 1 if jax.default_backend() == "cpu" else 8


class SequenceModel:
    """``apply(params, inputs_BxTxD) -> outputs``: (B, O) at the last step or (B, T, O) at all."""

    def __init__(self, config: ModelConfig, input_size: int, output_size: int, readout: str,
                 seq_len: int | None = None):
        """``seq_len``: the input length T, for a T-dependent init (IndRNN's); None: unknown."""
        if readout not in ("last", "all"):
            raise ConfigError(f"readout must be 'last' or 'all', got {readout!r}")
        self.config = config
        self.unroll_steps = config.unroll or default_unroll()
        self.input_size = input_size
        self.output_size = output_size
        self.readout = readout
        self.cell = cells_lib.make_cell(config, seq_len=seq_len)
        self.head = nn.Dense(output_size)
        # What the backward pass of the scan keeps per step when ``remat`` is off (a speed knob,
        # same numbers): the cells' tagged pre-activations, the rest recomputed. LSTM train step
        # ~25% faster on CPU than keeping every gate activation (None: JAX's default residuals).
        # Only for cells that tag their pre-activations (``cells.PREACTIVATION``; they say so with
        # ``tags_preactivation = True``): for others the policy would recompute the whole step.
        tags = getattr(type(self.cell), "tags_preactivation", False)
        self.residual_policy = SAVE_PREACTIVATIONS if tags else None

    def init(self, key: Array) -> dict:
        k_cell, k_head = jax.random.split(key)
        carry = self.initial_carry((1,))
        x = jnp.zeros((1, self.input_size))
        cell_params = self.cell.init(k_cell, carry, x)["params"]
        head_params = self.head.init(k_head, jnp.zeros((1, self.config.hidden_size)))["params"]
        return {"cell": cell_params, "readout": head_params}

    def initial_carry(self, batch_shape: tuple[int, ...]):
        """Zero carry: an array (B, H), or (c, h) for the LSTM."""
        return self.cell.initialize_carry(batch_shape)

    def cell_step(self, cell_params):
        """``(carry, x_BxD) -> (carry, h_BxH)`` for fixed params: the function the scan unrolls."""
        prepare = getattr(self.cell, "prepare_params", None)
        if prepare is not None:  # per-sequence work hoisted out of the scan (expRNN: W = exp(A))
            prepared = prepare(cell_params)
            return lambda carry, x: self.cell.prepared_step(prepared, carry, x)

        def step(carry, x):
            return self.cell.apply({"params": cell_params}, carry, x)

        return step

    def unroll(self, cell_params, inputs_BxTxD: Array, carry0=None, return_carries=False):
        """Run the cell over time. Returns (hidden_TxBxH, carries or None), time-major."""
        step = self.cell_step(cell_params)
        if return_carries:
            inner = step

            def step(carry, x):  # noqa: F811 - also emit the carry itself (LSTM: c and h)
                carry, h = inner(carry, x)
                return carry, (h, carry)

        _, ys = self._scan(step, inputs_BxTxD, carry0)
        if return_carries:
            return ys
        return ys, None

    def last_hidden(self, cell_params, inputs_BxTxD: Array, carry0=None) -> Array:
        """``unroll(...)[0][-1]`` (same numbers) without stacking the T hidden states: the scan
        carries the latest output instead. For a last-step readout this keeps a (T, B, H) output
        and its zero-padded cotangent out of the train step (under a sweep's vmap, (T, S, B, H)
        buffers that spill out of cache: vmapped train step ~1.3x faster on CPU)."""
        inner = self.cell_step(cell_params)

        def step(carry_h, x):
            carry, h = inner(carry_h[0], x)
            return (carry, h), None

        if carry0 is None:
            carry0 = self.initial_carry(inputs_BxTxD.shape[:1])
        h0 = jnp.zeros((inputs_BxTxD.shape[0], self.config.hidden_size), inputs_BxTxD.dtype)
        (_, h), _ = self._scan(step, inputs_BxTxD, (carry0, h0))
        return h

    def _scan(self, step, inputs_BxTxD: Array, carry0):
        """``lax.scan`` of ``step`` over time with the remat / residual policy and ``unroll``."""
        if inputs_BxTxD.ndim != 3 or inputs_BxTxD.shape[-1] != self.input_size:
            raise ValueError(
                f"inputs must have shape (batch, time, {self.input_size}), got {inputs_BxTxD.shape}"
            )
        if self.config.remat:
            step = jax.checkpoint(step)  # keep only the carries; recompute the whole step
        elif self.residual_policy is not None:
            step = jax.checkpoint(step, policy=self.residual_policy)
        if carry0 is None:
            carry0 = self.initial_carry(inputs_BxTxD.shape[:1])
        return jax.lax.scan(step, carry0, jnp.swapaxes(inputs_BxTxD, 0, 1), unroll=self.unroll_steps)

    def apply(self, params, inputs_BxTxD: Array, return_carries: bool = False):
        """Outputs (B, O) or (B, T, O); with ``return_carries`` also the carries, time-major (T, B, ...).
        ``params`` is ``{"cell", "readout"}``; flax's ``{"params": ...}`` wrapping is accepted too."""
        if set(params) == {"params"}:  # model.apply({'params': p}, x), as flax users write it
            params = params["params"]
        if not {"cell", "readout"} <= set(params):
            raise ValueError(f"params must hold 'cell' and 'readout' (as init returns them), "
                             f"got keys {sorted(params)}")
        head = lambda h: self.head.apply({"params": params["readout"]}, h)  # noqa: E731
        if self.readout == "last" and not return_carries:
            return head(self.last_hidden(params["cell"], inputs_BxTxD))
        hidden_TxBxH, carries = self.unroll(params["cell"], inputs_BxTxD, return_carries=return_carries)
        if self.readout == "last":
            out = head(hidden_TxBxH[-1])
        else:
            out = jnp.swapaxes(head(hidden_TxBxH), 0, 1)
        return (out, carries) if return_carries else out


def count_params(params, cell: str | None = None) -> int:
    """Free parameters of one model's params. With ``cell``, a param of which the cell uses only
    the antisymmetric part (``CellSpec.skew_params``: expRNN's A, whose strict upper triangle
    generates skew(A); AntisymmetricRNN's W, through W - W^T; svd_margin's A_U and A_V) counts
    H(H-1)/2, not H^2; IndRNN's u is a vector, H. Without ``cell``: every stored entry."""
    total = sum(x.size for x in jax.tree_util.tree_leaves(params))
    if cell is not None:
        cell_params = params.get("cell", params)
        margin = (cells_lib.MARGIN_U, cells_lib.MARGIN_V) if cells_lib.MARGIN_P in cell_params else ()
        for name in cells_lib.get_cell_spec(cell).skew_params + margin:
            h = cell_params[name].shape[-1]
            total -= cell_params[name].size - h * (h - 1) // 2
    return int(total)
