"""Named PRNG streams: every random number of a run derives from its seed through one of these.

Fixed numbers, so a resumed run, a sweep member and a notebook that re-opens a run draw exactly
the same params, batches, probe sequences and evaluation sets.
"""

from __future__ import annotations

import jax

INIT_STREAM, DATA_STREAM, EVAL_STREAM, PROBE_STREAM, TEST_STREAM = 0, 1, 2, 3, 4


def stream_key(seed: int | jax.Array, stream: int) -> jax.Array:
    """The key of ``stream`` for ``seed``: ``fold_in(PRNGKey(seed), stream)``."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), stream)
