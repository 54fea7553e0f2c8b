"""Sequential image classification: pixel(-by-pixel) MNIST (Le et al. 2015), permuted MNIST, and
scikit-learn's 8x8 digits, which ship with scikit-learn and so work offline.

The image is read one pixel per step (or one row per step), the class at the last step. The
variant is the sequence length ``task.seq_len``:

- ``digits``: 64 (pixels, 1 input) or 8 (rows, 8 inputs); 1797 images split test 512 / valid 256 /
  train 1029 by a fixed seed.
- ``pixel_mnist``: 784 (pixels), 196 (2x2-average-pooled 14x14 pixels) or 28 (rows, 28 inputs);
  train 55000 / valid 5000 (a fixed seeded 1/12 of the training split) / test 10000.

``permuted=True`` reorders the pixels by one fixed permutation (``np.random.RandomState(92916)``,
expRNN's convention) before they are cut into steps. Pixel values are scaled to [0, 1].

Data pipeline: every split lives on the device as integer arrays (uint8 pixels, 4x smaller than
float32) and is scaled per batch. Training batches are a per-epoch shuffle: the batch of step s is
a pure function of (data key, s) (epoch = s // steps_per_epoch shuffles by ``fold_in(key, epoch)``),
so a resumed run sees exactly the batches an uninterrupted one would; the last partial batch of an
epoch is dropped. Evaluation walks the validation (or test) split in order, batch i holding
samples ``i*B .. i*B+B-1`` (wrapping around at the end of the split).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnn_spectra import datasets
from rnn_spectra.errors import ConfigError
from rnn_spectra.tasks.base import Task

if TYPE_CHECKING:
    from rnn_spectra.config import TaskConfig

N_CLASSES = 10
# A classification task counts as solved at this test accuracy (published pixel-MNIST results
# separate there: tanh RNN ~35%, every model that "works" above 95%).
SOLVED_ACCURACY = 0.9
# Validation: a fixed seeded 1/12 of the training split (5000 of MNIST's 60000).
MNIST_VALID_FRACTION, MNIST_SPLIT_SEED = 12, 0


@dataclasses.dataclass(frozen=True)
class ImageSplits:
    """Device-resident splits: ``x_*`` (N, T, D) integer pixels (times ``scale`` -> [0, 1]), ``y_*`` (N,)."""

    x_train: jax.Array
    y_train: jax.Array
    x_valid: jax.Array
    y_valid: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    scale: float
    baseline: float  # cross-entropy of the training class frequencies (best input-free guess)


def _prepare(images: dict[str, np.ndarray], seq_len: int, pool: int, permuted: bool,
             max_value: int) -> ImageSplits:
    """(N, h, w) uint8 images per split -> (N, seq_len, D) sequences on the device."""
    out: dict[str, Any] = {}
    for split in ("train", "valid", "test"):
        x = images[f"{split}_images"]
        if pool > 1:  # p x p block sums (exact in uint16), scaled together with the pixels
            n, h, w = x.shape
            x = x.reshape(n, h // pool, pool, w // pool, pool).astype(np.uint16).sum(axis=(2, 4))
        flat = x.reshape(x.shape[0], -1)
        if permuted:
            flat = flat[:, datasets.fixed_permutation(flat.shape[1])]
        out[f"x_{split}"] = jnp.asarray(flat.reshape(flat.shape[0], seq_len, -1))
        out[f"y_{split}"] = jnp.asarray(images[f"{split}_labels"], jnp.int32)
    freq = np.bincount(images["train_labels"], minlength=N_CLASSES) / len(images["train_labels"])
    baseline = float(-np.sum(freq[freq > 0] * np.log(freq[freq > 0])))
    return ImageSplits(**out, scale=1.0 / (max_value * pool * pool), baseline=baseline)


@dataclasses.dataclass(frozen=True)
class SequentialImageTask(Task):
    """Classify an image read as a sequence; cross-entropy at the last step; metrics loss, ce, accuracy."""

    permuted: bool = False
    data: ImageSplits | None = dataclasses.field(default=None, compare=False, repr=False)

    output_size = N_CLASSES
    readout = "last"
    VARIANTS: ClassVar[dict[int, tuple[int, str]]] = {}  # seq_len -> (pooling, description)

    @classmethod
    def check_seq_len(cls, name: str, seq_len: int) -> int:
        if seq_len not in cls.VARIANTS:
            valid = ", ".join(f"{t} ({d})" for t, (_, d) in cls.VARIANTS.items())
            raise ConfigError(f"task.seq_len={seq_len} is not a {name} variant; valid: {valid}")
        return cls.VARIANTS[seq_len][0]

    @property
    def input_size(self) -> int:  # noqa: D401 - pixels per step
        return int(self.data.x_train.shape[-1])

    def _scaled(self, x):
        return x.astype(jnp.float32) * self.data.scale

    def batch(self, key, batch_size):
        """Training samples drawn uniformly with replacement (probes, synthetic-style use)."""
        idx = jax.random.randint(key, (batch_size,), 0, self.data.x_train.shape[0])
        return self._scaled(self.data.x_train[idx]), self.data.y_train[idx]

    def steps_per_epoch(self, batch_size: int) -> int:
        n = self.data.x_train.shape[0]
        if batch_size > n:
            raise ConfigError(f"train.batch_size={batch_size} exceeds the {n} training images")
        return n // batch_size

    def train_batch(self, data_key, step, batch_size):
        n, per_epoch = self.data.x_train.shape[0], self.steps_per_epoch(batch_size)
        epoch, pos = step // per_epoch, step % per_epoch
        order = jax.random.permutation(jax.random.fold_in(data_key, epoch), n)
        idx = jax.lax.dynamic_slice_in_dim(order, pos * batch_size, batch_size)
        return self._scaled(self.data.x_train[idx]), self.data.y_train[idx]

    def eval_batch(self, eval_key, index, batch_size, test=False):
        del eval_key  # the splits are fixed: batch i is the same images on every stream call

        def take(x, y):
            idx = (index * batch_size + jnp.arange(batch_size)) % x.shape[0]
            return self._scaled(x[idx]), y[idx]

        d = self.data
        if isinstance(test, bool):
            return take(d.x_test, d.y_test) if test else take(d.x_valid, d.y_valid)
        (xt, yt), (xv, yv) = take(d.x_test, d.y_test), take(d.x_valid, d.y_valid)
        return jnp.where(test, xt, xv), jnp.where(test, yt, yv)

    def loss(self, outputs, targets):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs, targets))

    def metrics(self, outputs, targets):
        ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs, targets))
        return {"loss": ce, "ce": ce, "accuracy": jnp.mean(jnp.argmax(outputs, -1) == targets)}

    @property
    def baseline(self):
        return self.data.baseline

    @staticmethod
    def solved_by(metrics, baseline):
        return bool(metrics.get("accuracy", -math.inf) >= SOLVED_ACCURACY)


@dataclasses.dataclass(frozen=True)
class DigitsTask(SequentialImageTask):
    """scikit-learn's 8x8 digits, 64 pixel steps or 8 row steps (offline)."""

    VARIANTS = {64: (1, "one pixel per step"), 8: (1, "one row of 8 pixels per step")}

    @classmethod
    def from_config(cls, cfg: TaskConfig) -> DigitsTask:
        if cfg.data_dir is not None:
            raise ConfigError("task.data_dir does not apply to digits (it ships with scikit-learn)")
        pool = cls.check_seq_len("digits", cfg.seq_len)
        data = _prepare(datasets.digits_splits(), cfg.seq_len, pool, cfg.permuted, max_value=16)
        return cls(seq_len=cfg.seq_len, permuted=cfg.permuted, data=data)


@dataclasses.dataclass(frozen=True)
class PixelMNISTTask(SequentialImageTask):
    """MNIST read pixel by pixel (784), 14x14-pooled pixel by pixel (196) or row by row (28)."""

    VARIANTS = {784: (1, "one pixel per step"), 196: (2, "2x2-pooled 14x14, one pixel per step"),
                28: (1, "one row of 28 pixels per step")}

    @classmethod
    def from_config(cls, cfg: TaskConfig) -> PixelMNISTTask:
        pool = cls.check_seq_len("pixel_mnist", cfg.seq_len)
        data_dir = cfg.data_dir or datasets.default_data_dir("mnist")
        raw = datasets.load_mnist(data_dir)
        order = np.random.RandomState(MNIST_SPLIT_SEED).permutation(len(raw["train_labels"]))
        n_valid = len(order) // MNIST_VALID_FRACTION
        valid, train = order[:n_valid], order[n_valid:]
        images = {"train_images": raw["train_images"][train], "train_labels": raw["train_labels"][train],
                  "valid_images": raw["train_images"][valid], "valid_labels": raw["train_labels"][valid],
                  "test_images": raw["test_images"], "test_labels": raw["test_labels"]}
        if min(len(train), len(valid), len(raw["test_labels"])) == 0:
            raise ConfigError(f"{data_dir}: too few MNIST images to hold out a validation split "
                              f"(1/{MNIST_VALID_FRACTION} of {len(order)} training images)")
        data = _prepare(images, cfg.seq_len, pool, cfg.permuted, max_value=255)
        return cls(seq_len=cfg.seq_len, permuted=cfg.permuted, data=data)


__all__ = ["DigitsTask", "PixelMNISTTask", "SequentialImageTask", "SOLVED_ACCURACY"]
