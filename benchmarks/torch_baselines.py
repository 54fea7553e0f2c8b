"""PyTorch peers of our train step: ``torch.nn.RNN/LSTM/GRU`` + linear readout, Adam, global-norm clip.

Optional: ``pip install .[bench]``. ``available()`` says whether torch imports; nothing here is
imported by the library. ``device="cuda"`` runs the peer on the GPU, where ``torch.nn.RNN/LSTM/GRU``
dispatch to cuDNN's fused RNN kernels (``cudnn_info()`` says which cuDNN and whether TF32 is on).
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


def cuda_available() -> bool:
    """True when torch imports and sees a CUDA device (a CPU wheel never does)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def cudnn_info() -> dict:
    """What the CUDA peer runs on: card, cuDNN version, whether cuDNN and TF32 are enabled."""
    import torch

    return {"device": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "cudnn_enabled": torch.backends.cudnn.enabled,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}


class TorchStep:
    """One training step of a torch RNN on a fixed batch: forward, MSE at the last step, backward,
    ``clip_grad_norm_``, Adam. Mirrors ``rnn_spectra.train.make_train_step`` on the adding task.

    ``device="cuda"``: modules and the batch on the GPU with cuDNN enabled (its RNN kernels, torch's
    defaults otherwise: TF32 in cuDNN as torch ships it); ``run`` synchronizes before returning so
    a wall-clock timer around it measures the GPU work. ``threads`` only matters on the CPU."""

    def __init__(self, cell: str, hidden_size: int, inputs_BxTxD: np.ndarray, targets_Bx1: np.ndarray,
                 *, learning_rate: float = 1e-3, clip_value: float = 1.0, threads: int | None = None,
                 seed: int = 0, device: str = "cpu"):
        import torch

        self.device = device
        self.cuda = device.startswith("cuda")
        self.threads = None if self.cuda else (threads or os.cpu_count() or 1)
        if self.cuda:
            torch.backends.cudnn.enabled = True
        else:
            # XLA's CPU backend flushes denormals to zero; without this a decaying hidden state can
            # make torch's step 10-100x slower for reasons unrelated to the RNN implementation.
            torch.set_flush_denormal(True)
        torch.manual_seed(seed)
        kind, kwargs = TORCH_CELLS[cell]
        self.torch = torch
        rnn = getattr(torch.nn, kind)(inputs_BxTxD.shape[-1], hidden_size, batch_first=True, **kwargs)
        self.rnn = rnn.to(device)  # on CUDA this also flattens the weights into cuDNN's layout
        self.head = torch.nn.Linear(hidden_size, targets_Bx1.shape[-1]).to(device)
        self.params = [*self.rnn.parameters(), *self.head.parameters()]
        self.opt = torch.optim.Adam(self.params, lr=learning_rate)
        self.clip_value = clip_value
        self.x = torch.from_numpy(np.array(inputs_BxTxD, dtype=np.float32)).to(device)
        self.y = torch.from_numpy(np.array(targets_Bx1, dtype=np.float32)).to(device)

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
        if self.cuda:
            self.torch.cuda.synchronize()  # nothing queued before the timer is billed to us
            for _ in range(steps):
                self()
            self.torch.cuda.synchronize()
            return
        self.torch.set_num_threads(self.threads)  # process-global: set for every timed run
        for _ in range(steps):
            self()
