"""The study's grids: variants of the question and the presets that cross them with tasks.

Plain data, no JAX: the CLI reads the preset names from here without starting JAX.
"""

from __future__ import annotations

import dataclasses
import math

from rnn_spectra.errors import unknown_name


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the study's tables: a cell with its recurrent init (clipping is crossed in)."""

    cell: str
    recurrent_init: str
    init_scale: float
    optim: str | None = None  # None: the preset's optimizer
    label: str = ""
    learning_rates: tuple[float, ...] | None = None  # None: the preset's grid
    clips: tuple[str, ...] | None = None  # None: the preset's clipping modes
    tasks: tuple[str, ...] | None = None  # None: every task of the preset; else only these

    @property
    def name(self) -> str:
        return self.label or f"{self.cell}/{self.recurrent_init}"


# The question's variants. Init scales follow REFERENCES.md: tanh N(0, 1/N); ReLU N(0, 2/N)
# (He); orthogonal gain 1; IRNN W = I; np-RNN top eigenvalue 1.
BASE_VARIANTS = (
    Variant("tanh_rnn", "normal", 1.0),
    Variant("tanh_rnn", "orthogonal", 1.0),
    Variant("relu_rnn", "normal", math.sqrt(2.0)),
    Variant("relu_rnn", "orthogonal", 1.0),
    Variant("irnn", "identity", 1.0),
    Variant("relu_rnn", "np_rnn", 1.0),
    Variant("lstm", "orthogonal", 1.0),
    Variant("gru", "orthogonal", 1.0),
)
# Cells that constrain W_s instead (constrained_cells.py), each with its paper's init.
CONSTRAINED_VARIANTS = (
    Variant("indrnn", "uniform", 1.0),
    Variant("antisymmetric", "normal", 1.0),
    Variant("exprnn", "henaff", 1.0),
)
# The image tasks: (task, T, config overrides); permuted ones get their own table.
DIGITS = (("digits", 64, ()), ("digits", 64, (("task.permuted", True),)))
DIGITS_REFERENCES = ("tanh_rnn/orthogonal", "irnn/identity", "lstm/orthogonal", "gru/orthogonal")
PIXEL_MNIST = (("pixel_mnist", 784, ()), ("pixel_mnist", 784, (("task.permuted", True),)))


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    description: str
    tasks: tuple[tuple, ...]  # (task, T) or (task, T, ((config key, value), ...))
    variants: tuple[Variant, ...]
    clips: tuple[str, ...]  # clipping modes crossed with every variant
    learning_rates: tuple[float, ...]
    clip_values: tuple[float, ...]  # thresholds tried where clipping is on
    seeds: tuple[int, ...]
    hidden_size: int
    steps: int
    batch_size: int
    optimizer: str = "adam"
    eval_every: int = 100
    eval_batches: int = 2
    eval_batch_size: int = 128
    test_chunks: int = 4  # test set: test_chunks x eval_batches x eval_batch_size samples
    log_every: int = 25
    spectral_every: int = 100
    checkpoint_every: int = 0
    target_fraction: float = 0.5  # time-to-target: first eval below this x baseline
    overrides: tuple[tuple[str, object], ...] = ()  # other config keys


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke", description="about a minute (4 programs to compile); for tests and notebooks",
        tasks=(("adding", 8),), variants=BASE_VARIANTS,
        clips=("none", "global_norm"), learning_rates=(1e-2,), clip_values=(1.0,), seeds=(0, 1),
        hidden_size=8, steps=20, batch_size=8, eval_every=10, eval_batches=1, eval_batch_size=32,
        test_chunks=2, log_every=5, spectral_every=10,
    ),
    "cpu": Preset(
        name="cpu", description="the whole grid on a 2-core CPU in 10-15 minutes",
        tasks=(("adding", 50), ("adding", 100), ("copying", 20), ("copying", 50))
        + tuple((t, n, o + (("train.steps", 150),)) for t, n, o in DIGITS),
        # On digits only one reference per family joins the constrained cells, to fit the time.
        variants=tuple(v if v.name in DIGITS_REFERENCES else dataclasses.replace(v, tasks=("adding", "copying"))
                       for v in BASE_VARIANTS)
        + tuple(dataclasses.replace(v, tasks=("digits",)) for v in CONSTRAINED_VARIANTS),
        clips=("none", "global_norm"), learning_rates=(1e-3, 1e-2),
        clip_values=(1.0,), seeds=(0, 1), hidden_size=32, steps=500, batch_size=32,
        eval_every=50, eval_batches=2, eval_batch_size=128, test_chunks=4, log_every=50,
        spectral_every=250,
    ),
    "paper": Preset(
        name="paper",
        description="uRNN protocol (H=128, RMSProp 1e-3, element-wise clip 1) and the IRNN "
                    "protocol (SGD, norm clip 1); for accelerators, checkpointed and resumable",
        tasks=(("adding", 100), ("adding", 200), ("adding", 400), ("copying", 100),
               ("copying", 200)) + PIXEL_MNIST,
        variants=BASE_VARIANTS + CONSTRAINED_VARIANTS + (Variant(
            "irnn", "identity", 1.0, optim="sgd", label="irnn/identity/sgd",
            learning_rates=(1e-4, 1e-3, 1e-2), clips=("none", "global_norm")),),
        clips=("none", "value"), learning_rates=(1e-3,), clip_values=(1.0,), seeds=(0, 1, 2),
        hidden_size=128, steps=100_000, batch_size=50, optimizer="rmsprop", eval_every=1000,
        eval_batches=4, eval_batch_size=500, test_chunks=5, log_every=200, spectral_every=5000,
        checkpoint_every=2000, overrides=(("optim.rmsprop_decay", 0.9),),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise unknown_name("study preset", name, PRESETS)
    return PRESETS[name]
