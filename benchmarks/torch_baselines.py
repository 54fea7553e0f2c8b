"""PyTorch peers of our train step: ``torch.nn.RNN/LSTM/GRU`` + linear readout, Adam, global-norm clip.

Optional: ``pip install .[bench]``. ``available()`` says whether torch imports; nothing here is
imported by the library.
"""

from __future__ import annotations

import os

import numpy as np

# Our cell name -> (torch module name, extra kwargs).
TORCH_CELLS = {
    "relu_rnn": ("RNN", {"nonlinearity": "relu"}),
    "tanh_rnn": ("RNN", {"nonlinearity": "tanh"}),
    "lstm": ("LSTM", {}),
    "gru": ("GRU", {}),
}


def available() -> tuple[bool, str]:
    """(True, version) when torch imports, else (False, why)."""
    try:
        import torch
    except ImportError as e:  # optional extra
        return False, f"torch not installed ({e}); `pip install .[bench]` adds it"
    return True, torch.__version__


class TorchStep:
    """One training step of a torch RNN on a fixed batch: forward, MSE at the last step, backward,
    ``clip_grad_norm_``, Adam. Mirrors ``rnn_spectra.train.make_train_step`` on the adding task."""

    def __init__(self, cell: str, hidden_size: int, inputs_BxTxD: np.ndarray, targets_Bx1: np.ndarray,
                 *, learning_rate: float = 1e-3, clip_value: float = 1.0, threads: int | None = None,
                 seed: int = 0):
        import torch

        self.threads = threads or os.cpu_count() or 1
        # XLA's CPU backend flushes denormals to zero; without this a decaying hidden state can
        # make torch's step 10-100x slower for reasons unrelated to the RNN implementation.
        torch.set_flush_denormal(True)
        torch.manual_seed(seed)
        kind, kwargs = TORCH_CELLS[cell]
        self.torch = torch
        self.rnn = getattr(torch.nn, kind)(inputs_BxTxD.shape[-1], hidden_size, batch_first=True, **kwargs)
        self.head = torch.nn.Linear(hidden_size, targets_Bx1.shape[-1])
        self.params = [*self.rnn.parameters(), *self.head.parameters()]
        self.opt = torch.optim.Adam(self.params, lr=learning_rate)
        self.clip_value = clip_value
        self.x = torch.from_numpy(np.array(inputs_BxTxD, dtype=np.float32))
        self.y = torch.from_numpy(np.array(targets_Bx1, dtype=np.float32))

    def __call__(self) -> float:
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        hidden, _ = self.rnn(self.x)
        loss = torch.mean((self.head(hidden[:, -1]) - self.y) ** 2)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip_value)
        self.opt.step()
        return loss

    def run(self, steps: int) -> None:
        self.torch.set_num_threads(self.threads)  # process-global: set for every timed run
        for _ in range(steps):
            self()
