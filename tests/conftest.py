"""Test set-up: CPU only, quiet JAX, a helper for tiny real configs."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from rnn_spectra.config import default_config  # noqa: E402


@pytest.fixture
def tiny_config():
    """A real config shrunk to seconds: adding T=10, H=8, 20 steps."""
    c = default_config()
    c.task.seq_len = 10
    c.model.hidden_size = 8
    c.train.steps = 20
    c.train.batch_size = 8
    c.train.eval_every = 10
    c.train.eval_batches = 2
    c.train.eval_batch_size = 16
    c.train.log_every = 5
    c.train.progress = False
    c.spectral.every = 0  # tests that need spectra.jsonl turn it on (compiling the monitor costs seconds)
    return c
