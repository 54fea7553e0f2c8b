"""Adding problem (T=100), tanh RNN, Adam with global-norm clipping.

Run:
    rnn-spectra train --config configs/adding.py --workdir runs/adding
    rnn-spectra train --config configs/adding.py --workdir runs/relu \
        --config.model.cell=relu_rnn --config.train.steps=500

Expect: eval MSE against the always-predict-1 baseline 1/6 = 0.1667 in summary.json; a model
that learns the task ends well below it (an LSTM with H=128 does within ~2k steps).
"""

from rnn_spectra.config import default_config


def get_config():
    c = default_config()
    c.task.name = "adding"
    c.task.seq_len = 100  # T
    c.model.cell = "tanh_rnn"  # tanh_rnn | relu_rnn | irnn | lstm | gru
    c.model.hidden_size = 128
    c.optim.name = "adam"
    c.optim.learning_rate = 1e-3
    c.optim.clip = "global_norm"
    c.optim.clip_value = 1.0
    c.train.steps = 2000
    c.train.batch_size = 64
    c.train.eval_every = 200
    c.train.log_every = 50
    return c
