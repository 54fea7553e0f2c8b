"""rnn_spectra: train RNNs on long-range tasks and measure the spectra that decide if they learn."""

__version__ = "0.1.0"
