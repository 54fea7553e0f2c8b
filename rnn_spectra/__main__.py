from rnn_spectra.cli import entry

entry()
