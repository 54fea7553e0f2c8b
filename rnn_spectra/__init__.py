"""rnn_spectra: train tanh/ReLU RNNs, LSTMs and GRUs on long-range tasks and measure why they
learn or fail.

The public API for notebooks and scripts::

    import rnn_spectra as rs
    run = rs.load_run("runs/x")                   # config, summary, metrics, spectra, params(step)
    model, params = rs.init_model(cell="irnn", hidden_size=64, input_size=2)
    cs = rs.spectral.make_step_fn(model, params["cell"])
    rs.spectral.lyapunov_spectrum(cs.step_fn, cs.s0, xs_TxD, k=8)

Names are imported on first use, so ``import rnn_spectra`` (and the command line) starts without
JAX.
"""

import importlib as _importlib  # private: dir(rnn_spectra) lists the API, not its imports

_LAZY = {
    "load_run": ("rnn_spectra.runs", "load_run"),
    "Run": ("rnn_spectra.runs", "Run"),
    "init_model": ("rnn_spectra.runs", "init_model"),
    "train_and_evaluate": ("rnn_spectra.loop", "train_and_evaluate"),
    "default_config": ("rnn_spectra.config", "default_config"),
    "spectral": ("rnn_spectra.spectral", None),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'rnn_spectra' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = _importlib.import_module(module)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
