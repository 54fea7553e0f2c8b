"""Copying memory (Arjovsky et al. 2016): recall 10 symbols after a delay of T steps."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from rnn_spectra.tasks.base import Task

N_SYMBOLS = 8  # data symbols 1..8
N_RECALL = 10  # symbols to remember
BLANK, DELIMITER = 0, 9
# Solved when the eval cross-entropy is below this fraction of the memoryless baseline.
SOLVED_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class CopyingTask(Task):
    """Length T+20: 10 symbols, T-1 blanks, delimiter, 10 blanks; target: T+10 blanks, the symbols.

    Inputs are one-hot over 10 tokens (blank, 8 symbols, delimiter); outputs are logits over 9
    classes (blank and the 8 symbols). Loss: cross-entropy averaged over all T+20 steps.
    """

    input_size = N_SYMBOLS + 2
    output_size = N_SYMBOLS + 1
    readout = "all"

    @property
    def length(self):
        return self.seq_len + 2 * N_RECALL

    def batch(self, key, batch_size):
        symbols = jax.random.randint(key, (batch_size, N_RECALL), 1, N_SYMBOLS + 1)
        blanks = jnp.full((batch_size, self.seq_len - 1), BLANK)
        delim = jnp.full((batch_size, 1), DELIMITER)
        tail = jnp.full((batch_size, N_RECALL), BLANK)
        tokens = jnp.concatenate([symbols, blanks, delim, tail], axis=1)
        targets = jnp.concatenate(
            [jnp.full((batch_size, self.seq_len + N_RECALL), BLANK), symbols], axis=1
        )
        return jax.nn.one_hot(tokens, self.input_size), targets

    def loss(self, outputs, targets):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs, targets))

    def metrics(self, outputs, targets):
        ce = optax.softmax_cross_entropy_with_integer_labels(outputs, targets)
        recall = jnp.argmax(outputs[:, -N_RECALL:], -1) == targets[:, -N_RECALL:]
        return {"loss": jnp.mean(ce), "ce": jnp.mean(ce), "recall_acc": jnp.mean(recall)}

    @property
    def baseline(self):
        # Predict blank until the delimiter, then uniform over the 8 symbols: 10 ln 8 nats in all.
        return N_RECALL * math.log(N_SYMBOLS) / (self.seq_len + 2 * N_RECALL)

    @staticmethod
    def solved_by(metrics, baseline):
        return bool(metrics.get("loss", math.inf) < SOLVED_FRACTION * baseline)
