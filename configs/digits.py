"""scikit-learn's 8x8 digits read pixel by pixel (T=64), GRU, Adam; offline and CPU-sized.

Run:
    rnn-spectra train --config configs/digits.py --workdir runs/digits
    rnn-spectra train --config configs/digits.py --workdir runs/digits_perm \
        --config.task.permuted=true --config.model.cell=exprnn

Expect: eval accuracy (10 classes, chance 10%) and cross-entropy against the class-prior
baseline ln 10 = 2.30 in summary.json; validation is 256 images held out of the training split,
the test set 512 images (fixed split, seed 0).
"""

from rnn_spectra.config import default_config


def get_config():
    c = default_config()
    c.task.name = "digits"
    c.task.seq_len = 64  # 64: one pixel per step; 8: one row of 8 pixels per step
    c.task.permuted = False  # true: pixels in expRNN's fixed random order
    c.model.cell = "gru"  # tanh_rnn | relu_rnn | irnn | lstm | gru | indrnn | antisymmetric | exprnn
    c.model.hidden_size = 32
    c.optim.name = "adam"
    c.optim.learning_rate = 1e-2
    c.optim.clip = "global_norm"
    c.optim.clip_value = 1.0
    c.train.steps = 600
    c.train.batch_size = 32  # 1029 training images: 32 steps per epoch
    c.train.eval_every = 100
    c.train.eval_batches = 2
    c.train.eval_batch_size = 128  # 2 x 128 = the whole validation split
    c.train.log_every = 50
    return c
