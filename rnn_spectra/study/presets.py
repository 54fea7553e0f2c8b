"""The study's grids: a base config plus the axes that vary (variants, tasks, learning rates,
clipping, seeds). Every setting is a config key (``rnn_spectra.config``): nothing here re-spells
one. Plain data, no JAX: the CLI reads the preset names from here without starting JAX.
"""

from __future__ import annotations

import dataclasses
import math

from rnn_spectra.errors import unknown_name

Settings = tuple[tuple[str, object], ...]  # (dotted config key, value), applied in order


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the study's tables: a cell with its recurrent init (clipping is crossed in)."""

    name: str
    config: Settings
    learning_rates: tuple[float, ...] | None = None  # None: the preset's grid
    clips: tuple[str, ...] | None = None  # None: the preset's clipping modes
    clip_values: tuple[float, ...] | None = None  # None: the preset's clip thresholds
    tasks: tuple[str, ...] | None = None  # None: every task of the preset; else only these

    @property
    def cell(self) -> str:
        return dict(self.config)["model.cell"]


def variant(cell: str, init: str, scale: float, *, label: str = "", config: Settings = (),
            **kwargs) -> Variant:
    return Variant(label or f"{cell}/{init}", (("model.cell", cell), ("model.recurrent_init", init),
                                                ("model.init_scale", scale)) + config, **kwargs)


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    """One table: a task at one length, with its own settings (e.g. permuted, fewer steps)."""

    name: str
    seq_len: int
    config: Settings = ()

    @property
    def table(self) -> str:
        perm = "_perm" if dict(self.config).get("task.permuted") else ""
        return f"{self.name}{perm}_T{self.seq_len}"

    @property
    def settings(self) -> Settings:
        return (("task.name", self.name), ("task.seq_len", self.seq_len)) + self.config


# The question's variants. Init scales follow REFERENCES.md: tanh N(0, 1/N); ReLU N(0, 2/N)
# (He); orthogonal gain 1; IRNN W = I; np-RNN top eigenvalue 1.
BASE_VARIANTS = (
    variant("tanh_rnn", "normal", 1.0),
    variant("tanh_rnn", "orthogonal", 1.0),
    variant("relu_rnn", "normal", math.sqrt(2.0)),
    variant("relu_rnn", "orthogonal", 1.0),
    variant("irnn", "identity", 1.0),
    variant("relu_rnn", "np_rnn", 1.0),
    variant("lstm", "orthogonal", 1.0),
    variant("gru", "orthogonal", 1.0),
)
# Cells that constrain W_s instead (cells/constrained.py), each with its paper's settings.
# IndRNN as its official code trains the layer that is read out (Sunnydreamrain/IndRNN_Theano_Lasagne
# adding/adding.py; IndRNN_pytorch pixelMNIST): u ~ U[2^(-1/T), 2^(1/T)] ("indrnn" init, MAG =
# init_scale = 2), |u| <= 2^(1/T) (the cell's projection), input weights N(0, 0.001^2)
# (in2hidW=0.001), gradients clipped element-wise at 10 (gradclipvalue=10: the PyTorch code's
# p.grad.clamp_(-10, 10); the Theano code clips the backpropagated messages at 10 inside the
# layer, which optax has no counterpart for). Its Adam lr 2e-4 is not taken: our runs are 10^2 to
# 10^3 steps, not 10^5, so it gets the preset's learning-rate grid like every variant.
INDRNN_PAPER = variant("indrnn", "indrnn", 2.0, label="indrnn/paper",
                       config=(("model.input_init", "normal_std"), ("model.input_scale", 1e-3)),
                       clips=("value",), clip_values=(10.0,))
# AntisymmetricRNN with a stable forward Euler step (cells/constrained.py): gamma >= eps w^2 / 2
# for the largest |eig(W - W^T)| w ~ 2.9 of its normal init (eps 0.1 is in Chang et al.'s grid
# {0.01, 0.1, 1}); the config defaults, spelled out so the table names them.
ANTISYMMETRIC_STABLE = variant("antisymmetric", "normal", 1.0, label="antisymmetric/eps0.1_g0.5",
                               config=(("model.epsilon", 0.1), ("model.gamma", 0.5)))
CONSTRAINED_VARIANTS = (
    INDRNN_PAPER,
    ANTISYMMETRIC_STABLE,
    variant("exprnn", "henaff", 1.0),
)
# The image tasks; permuted ones get their own table.
DIGITS = (TaskEntry("digits", 64), TaskEntry("digits", 64, (("task.permuted", True),)))
DIGITS_REFERENCES = ("tanh_rnn/orthogonal", "irnn/identity", "lstm/orthogonal", "gru/orthogonal")
PIXEL_MNIST = (TaskEntry("pixel_mnist", 784), TaskEntry("pixel_mnist", 784, (("task.permuted", True),)))


def base(*, hidden_size, steps, batch_size, eval_every, eval_batches, eval_batch_size, log_every,
         spectral_every, optimizer="adam", checkpoint_every=0) -> Settings:
    """The settings every member of a preset shares."""
    return (("model.hidden_size", hidden_size), ("optim.name", optimizer),
            ("train.steps", steps), ("train.batch_size", batch_size),
            ("train.eval_every", eval_every), ("train.log_every", log_every),
            ("train.eval_batches", eval_batches), ("train.eval_batch_size", eval_batch_size),
            ("train.progress", False), ("spectral.every", spectral_every),
            ("checkpoint.every_steps", checkpoint_every), ("checkpoint.keep", 3))


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    description: str
    base: Settings  # every member's config (on top of the defaults)
    tasks: tuple[TaskEntry, ...]  # axis: one table each
    variants: tuple[Variant, ...]  # axis: one row each
    clips: tuple[str, ...]  # axis: optim.clip, crossed with every variant
    learning_rates: tuple[float, ...]  # axis: optim.learning_rate
    clip_values: tuple[float, ...]  # axis: optim.clip_value where clipping is on
    seeds: tuple[int, ...]  # axis: seed
    test_chunks: int = 4  # test set: test_chunks x eval_batches x eval_batch_size samples
    target_fraction: float = 0.5  # time-to-target: first eval below this x baseline


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke", description="about a minute (4 programs to compile); for tests and notebooks",
        base=base(hidden_size=8, steps=20, batch_size=8, eval_every=10, eval_batches=1,
                  eval_batch_size=32, log_every=5, spectral_every=10),
        tasks=(TaskEntry("adding", 8),), variants=BASE_VARIANTS,
        clips=("none", "global_norm"), learning_rates=(1e-2,), clip_values=(1.0,), seeds=(0, 1),
        test_chunks=2,
    ),
    "cpu": Preset(
        name="cpu", description="the whole grid on a 2-core CPU in 10-15 minutes",
        base=base(hidden_size=32, steps=500, batch_size=32, eval_every=50, eval_batches=2,
                  eval_batch_size=128, log_every=50, spectral_every=250),
        tasks=(TaskEntry("adding", 50), TaskEntry("adding", 100), TaskEntry("copying", 20),
               TaskEntry("copying", 50))
        + tuple(dataclasses.replace(t, config=t.config + (("train.steps", 150),)) for t in DIGITS),
        # On digits only one reference per family joins the constrained cells, to fit the time.
        variants=tuple(v if v.name in DIGITS_REFERENCES else dataclasses.replace(v, tasks=("adding", "copying"))
                       for v in BASE_VARIANTS)
        + tuple(dataclasses.replace(v, tasks=("digits",)) for v in CONSTRAINED_VARIANTS),
        clips=("none", "global_norm"), learning_rates=(1e-3, 1e-2), clip_values=(1.0,), seeds=(0, 1),
    ),
    "paper": Preset(
        name="paper",
        description="uRNN protocol (H=128, RMSProp 1e-3, element-wise clip 1) and the IRNN "
                    "protocol (SGD, norm clip 1); for accelerators, checkpointed and resumable",
        base=base(hidden_size=128, steps=100_000, batch_size=50, optimizer="rmsprop",
                  eval_every=1000, eval_batches=4, eval_batch_size=500, log_every=200,
                  spectral_every=5000, checkpoint_every=2000) + (("optim.rmsprop_decay", 0.9),),
        tasks=(TaskEntry("adding", 100), TaskEntry("adding", 200), TaskEntry("adding", 400),
               TaskEntry("copying", 100), TaskEntry("copying", 200)) + PIXEL_MNIST,
        variants=BASE_VARIANTS + CONSTRAINED_VARIANTS + (variant(
            "irnn", "identity", 1.0, label="irnn/identity/sgd", config=(("optim.name", "sgd"),),
            learning_rates=(1e-4, 1e-3, 1e-2), clips=("none", "global_norm")),),
        clips=("none", "value"), learning_rates=(1e-3,), clip_values=(1.0,), seeds=(0, 1, 2),
        test_chunks=5,
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise unknown_name("study preset", name, PRESETS)
    return PRESETS[name]
