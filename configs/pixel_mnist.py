"""Pixel-by-pixel MNIST (Le et al. 2015), T=784, uRNN protocol: H=128, RMSProp 1e-3; for a GPU.

Needs the MNIST files in task.data_dir (default $RNN_SPECTRA_DATA/mnist or ~/.cache/rnn_spectra/mnist):
    rnn-spectra data download mnist            # checksum-verified; offline, copy the 4 files there
Run:
    rnn-spectra train --config configs/pixel_mnist.py --workdir runs/pmnist
    rnn-spectra train --config configs/pixel_mnist.py --workdir runs/pmnist_perm \
        --config.task.permuted=true --config.model.cell=exprnn
    rnn-spectra train --config configs/pixel_mnist.py --workdir runs/rows \
        --config.task.seq_len=28        # row by row (28 steps of 28 pixels); 196: 14x14 pixels

Expect: eval accuracy in summary.json (chance 10%); published test accuracy, sequential /
permuted: LSTM 98.2 / 88, IRNN 97 / 82, expRNN 98.7 / 96.6 (docs/references.md), after far more
steps than the default here. Validation: 5000 images held out of the training split; test:
the 10000 test images (5 chunks of eval_batches x eval_batch_size).
"""

from rnn_spectra.config import default_config


def get_config():
    c = default_config()
    c.task.name = "pixel_mnist"
    c.task.seq_len = 784  # 784 pixels | 196 (2x2-pooled 14x14) | 28 rows
    c.task.permuted = False  # true: np.random.RandomState(92916).permutation(784)
    c.model.cell = "lstm"  # tanh_rnn | relu_rnn | irnn | lstm | gru | indrnn | antisymmetric | exprnn
    c.model.hidden_size = 128
    c.optim.name = "rmsprop"
    c.optim.learning_rate = 1e-3
    c.optim.rmsprop_decay = 0.9
    c.optim.clip = "value"  # element-wise at 1 (uRNN)
    c.optim.clip_value = 1.0
    c.optim.orthogonal_lr_factor = 0.1  # exprnn: its skew generator A learns 10x slower
    c.train.steps = 20000
    c.train.batch_size = 100
    c.train.eval_every = 1000
    c.train.eval_batches = 4
    c.train.eval_batch_size = 500
    c.train.log_every = 100
    c.checkpoint.every_minutes = 10.0
    return c
