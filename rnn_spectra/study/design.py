"""What a study's design is made of: a ``Preset`` (the base config and the axes that vary),
its ``Variant`` rows, its ``TaskEntry`` tables and, for an equal tuning budget, its ``Search``;
plus the helpers that build them. Plain data, no JAX. The presets themselves (the question's
variants and every named preset) are in ``presets.py``.
"""

from __future__ import annotations

import dataclasses
import math

Settings = tuple[tuple[str, object], ...]  # (dotted config key, value), applied in order


@dataclasses.dataclass(frozen=True)
class Search:
    """An equal tuning budget: ``trials`` points of a scrambled Sobol sequence (``grid.trials``)
    over log-uniform ranges of the learning rate, the global-norm clip threshold (used by the
    rows that clip) and a gain multiplying the variant's ``model.init_scale`` (used where the
    init has a gain: not ``GAINLESS_INITS``). Every row of a preset draws the same points."""

    trials: int
    learning_rate: tuple[float, float]
    clip_value: tuple[float, float] = (0.1, 10.0)
    init_gain: tuple[float, float] = (0.5, 1.5)
    seed: int = 0  # the Sobol scrambling: part of the design, never a run's seed


# Inits whose scale is not a gain: IndRNN's is the bound MAG of u's range, which its cell's
# projection enforces; expRNN's Henaff init scales rotation angles.
GAINLESS_INITS = ("indrnn", "henaff")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the study's tables: a cell with its recurrent init (clipping is crossed in)."""

    name: str
    config: Settings
    learning_rates: tuple[float, ...] | None = None  # None: the preset's grid
    clips: tuple[str, ...] | None = None  # None: the preset's clipping modes
    clip_values: tuple[float, ...] | None = None  # None: the preset's clip thresholds
    tasks: tuple[str, ...] | None = None  # None: every table; else only these tasks or tables
    # A cell name: this row's hidden size is chosen so its free parameters match that cell's at
    # the preset's hidden size (within 5%, grid.matched_hidden_size); None: the preset's size.
    match_params_of: str | None = None
    search: Search | None = None  # None: the preset's (its grid when it has no search)

    @property
    def cell(self) -> str:
        return dict(self.config)["model.cell"]

    @property
    def optimizer(self) -> str | None:
        return dict(self.config).get("optim.name")

    def on(self, entry: "TaskEntry") -> bool:
        return self.tasks is None or entry.name in self.tasks or entry.table in self.tasks


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
    # The table whose pilot chose this one's settings (a budget ladder: the settings chosen at
    # the first budget, confirmed at each); None: its own pilot chooses.
    tuned_on: str | None = None

    @property
    def table(self) -> str:
        perm = "_perm" if dict(self.config).get("task.permuted") else ""
        steps = dict(self.config).get("train.steps")
        budget = f"_S{steps}" if self.tuned_on is not None and steps else ""
        return f"{self.name}{perm}_T{self.seq_len}{budget}"

    @property
    def settings(self) -> Settings:
        return (("task.name", self.name), ("task.seq_len", self.seq_len)) + self.config


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
    pilot_seeds: tuple[int, ...]  # every setting of the grid: these choose each row's setting
    confirm_seeds: tuple[int, ...]  # the chosen setting only: these are reported
    test_chunks: int = 4  # test set: test_chunks x eval_batches x eval_batch_size samples
    # time to a target: first eval below each of these x baseline (time_to_target.py)
    target_fractions: tuple[float, ...] = (0.5, 0.1)
    extend_grid: bool = True  # best learning rate at the grid's edge: one more point beyond it
    pilot_config: Settings = ()  # only the pilot's members (e.g. no spectra: they choose, not explain)
    search: Search | None = None  # an equal tuning budget instead of the learning-rate grid
    # True: a variant on the preset's clipping modes is one row whose pilot tries each of them,
    # chosen with the other settings; False: one row per clipping mode, each confirmed
    choose_clip: bool = False


def log_grid(lo: float, hi: float, points: int) -> tuple[float, ...]:
    """``points`` learning rates evenly spaced in log10 from ``lo`` to ``hi``, 3 significant
    digits (so the settings' names stay short and equal on every machine)."""
    step = (math.log10(hi) - math.log10(lo)) / (points - 1)
    return tuple(float(f"{10 ** (math.log10(lo) + i * step):.3g}") for i in range(points))
