"""What every task provides, so training, sweeps and reports never branch on a task's name."""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, ClassVar

import jax

from rnn_spectra.errors import ConfigError

if TYPE_CHECKING:
    from rnn_spectra.config import TaskConfig

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Task(abc.ABC):
    """A synthetic sequence task: batches from a PRNG key, a loss, metrics and a trivial baseline.

    ``batch(key, n)`` returns ``(inputs_BxTxD, targets)``; the model reads out at the last step
    (``readout == "last"``) or at every step (``"all"``). Batches depend only on the key, so a run
    that folds its step into the key is reproducible and resumes exactly.
    """

    seq_len: int  # the task's T (for copying, the delay; the sequence is T + 20 long)

    input_size: ClassVar[int]
    output_size: ClassVar[int]
    readout: ClassVar[str]  # "last" or "all"

    @classmethod
    def from_config(cls, cfg: TaskConfig) -> Task:
        """The task a ``TaskConfig`` names. Synthetic tasks read ``seq_len`` only; dataset tasks
        override this to load their data."""
        if cfg.permuted:
            raise ConfigError(f"task.permuted applies to the image tasks, not {cfg.name!r}")
        if cfg.data_dir is not None:
            raise ConfigError(f"task.data_dir applies to pixel_mnist, not {cfg.name!r}")
        return cls(seq_len=cfg.seq_len)

    @property
    def length(self) -> int:
        """Number of time steps of one input sequence."""
        return self.seq_len

    @abc.abstractmethod
    def batch(self, key: Array, batch_size: int) -> tuple[Array, Array]:
        """A fresh batch drawn from ``key`` (synthetic tasks draw every batch anew)."""

    def train_batch(self, data_key: Array, step: Array, batch_size: int) -> tuple[Array, Array]:
        """The training batch of optimizer step ``step`` (0-based): a pure function of both, so
        resuming at a step replays exactly. Dataset tasks override this (epoch shuffles)."""
        return self.batch(jax.random.fold_in(data_key, step), batch_size)

    def eval_batch(self, eval_key: Array, index: Array, batch_size: int,
                   test: bool | Array = False) -> tuple[Array, Array]:
        """Held-out batch ``index`` of the fixed eval set (disjoint stream from training).

        ``test`` (a bool, or a traced one): the test set rather than validation. Synthetic tasks
        need not look at it (``eval_key`` already differs per stream); dataset tasks pick the
        split by it: validation is held out of the training split, test is the test split."""
        del test
        return self.batch(jax.random.fold_in(eval_key, index), batch_size)

    @abc.abstractmethod
    def loss(self, outputs: Array, targets: Array) -> Array:
        """Scalar training loss (mean over the batch)."""

    @abc.abstractmethod
    def metrics(self, outputs: Array, targets: Array) -> dict[str, Array]:
        """Scalar metrics, ``loss`` first; all are means over the batch except where named max."""

    @property
    @abc.abstractmethod
    def baseline(self) -> float:
        """Loss of the best input-independent (memoryless) predictor."""

    def baseline_on(self, targets: Array) -> Array | None:
        """The baseline predictor's loss on these ``targets`` where it varies with the sample (a
        comparison with the baseline is then paired with the same test set); None where
        ``baseline`` is exact on any set."""
        del targets
        return None

    def solved(self, metrics: dict[str, float]) -> bool:
        """The task's binary success criterion on a (large) eval set."""
        return self.solved_by(metrics, self.baseline)

    @staticmethod
    @abc.abstractmethod
    def solved_by(metrics: dict[str, float], baseline: float) -> bool:
        """The criterion as a rule on a metrics row and the baseline, needing no data: what a
        report applies to recorded rows (a missing metric never counts as solved)."""
