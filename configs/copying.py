"""Copying memory (delay T=100, sequences of T+20), LSTM, RMSProp with element-wise clipping.

The uRNN protocol (Arjovsky et al. 2016): RMSProp lr 1e-3, decay 0.9, element-wise clip at 1.

Run:
    rnn-spectra train --config configs/copying.py --workdir runs/copy
    rnn-spectra train --config configs/copying.py --workdir runs/copy_tanh \
        --config.model.cell=tanh_rnn --config.model.hidden_size=80

Expect: eval cross-entropy against the memoryless baseline 10 ln 8 / (T+20) = 0.1733 (T=100);
recall_acc is 0.125 at that baseline and 1.0 when the task is solved.
"""

from rnn_spectra.config import default_config


def get_config():
    c = default_config()
    c.task.name = "copying"
    c.task.seq_len = 100  # delay T; sequences are T + 20 long
    c.model.cell = "lstm"
    c.model.hidden_size = 40  # uRNN protocol: LSTM 40, tanh RNN / IRNN 80
    c.optim.name = "rmsprop"
    c.optim.learning_rate = 1e-3
    c.optim.rmsprop_decay = 0.9
    c.optim.clip = "value"  # element-wise, as in the uRNN paper
    c.optim.clip_value = 1.0
    c.train.steps = 3000
    c.train.batch_size = 20
    c.train.eval_every = 250
    c.train.log_every = 50
    return c
