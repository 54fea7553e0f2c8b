"""What a preset expands to: one ``Member`` per (phase, table, variant, clipping, learning rate,
clip threshold, init gain, seed), and the config each member trains with. Plain functions of the preset,
shared by the study's run (what to train) and its member checks (what each member must be).

The pilot expands the whole grid on the pilot seeds; ``beyond_edge`` adds one learning rate past
the grid where a row's best one sits on its edge; ``confirmation`` trains a chosen setting on the
confirmation seeds. ``seed_offset`` shifts every seed (a replication on disjoint seeds).
A preset with a ``Search`` expands its ``trials`` points instead of the grid (``trials``), and a
table ``tuned_on`` another has no pilot: it confirms the other's chosen settings (a ladder).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

from rnn_spectra import config as config_lib
from rnn_spectra.config_files import config_from_dict
from rnn_spectra.errors import ConfigError
from rnn_spectra.study.design import GAINLESS_INITS, Preset, Search, TaskEntry, Variant

PHASES = ("pilot", "extend", "confirm")  # the first two choose, the last is reported
MATCH_TOLERANCE = 0.05  # matched parameter counts: within 5%


@dataclasses.dataclass(frozen=True)
class Member:
    entry: TaskEntry
    variant: Variant
    clip: str
    clip_value: float
    learning_rate: float
    seed: int
    phase: str = "pilot"
    init_gain: float = 1.0  # times the variant's model.init_scale (a search's third axis)
    # the pilot chose the clipping mode with the other settings (``Preset.choose_clip``): the
    # row is the variant alone, its pilot tries every mode
    clip_chosen: bool = False

    @property
    def task(self) -> str:
        return self.entry.name

    @property
    def table(self) -> str:
        return self.entry.table

    @property
    def row(self) -> str:
        """Variant x clipping: one row of a table (the variant alone where the pilot chose the
        clipping mode: then the mode is part of the setting, like the learning rate)."""
        return self.variant.name if self.clip_chosen else f"{self.variant.name}/clip={self.clip}"

    @property
    def setting(self) -> str:
        cv = f"_c{self.clip_value:g}" if self.clip != "none" else ""
        gain = f"_g{self.init_gain:g}" if self.init_gain != 1.0 else ""
        return f"lr{self.learning_rate:g}{cv}{gain}"

    @property
    def relpath(self) -> str:
        return os.path.join("runs", self.phase, self.table, self.row.replace("/", "__"),
                            f"{self.setting}_s{self.seed}")


def _3g(x: float) -> float:
    return float(f"{x:.3g}")  # short setting names, equal on every machine


@functools.lru_cache(maxsize=16)
def trials(search: Search) -> tuple[tuple[float, float, float], ...]:
    """The search's points as (learning rate, clip threshold, init gain), 3 significant digits:
    the first ``trials`` points of a scrambled Sobol sequence (``scipy.stats.qmc``; seeded, so
    the same on every run), mapped log-uniformly onto the ranges. Quasi-random rather than
    random: 8 points cover 3 axes more evenly than 8 independent draws."""
    import warnings

    import numpy as np
    from scipy.stats import qmc

    with warnings.catch_warnings():  # a count that is no power of 2 loses balance, not validity
        warnings.simplefilter("ignore", UserWarning)
        u = qmc.Sobol(d=3, scramble=True, seed=search.seed).random(search.trials)
    ranges = (search.learning_rate, search.clip_value, search.init_gain)
    logs = [(np.log(lo), np.log(hi)) for lo, hi in ranges]
    return tuple(tuple(_3g(float(np.exp(a + x * (b - a)))) for x, (a, b) in zip(p, logs))
                 for p in u)


def search_of(preset: Preset, v: Variant) -> Search | None:
    return v.search or preset.search


def _settings(preset: Preset, v: Variant):
    """(clip, clip threshold, learning rate, init gain) of each of the row's pilot settings."""
    search = search_of(preset, v)
    if search is not None:
        # svd_margin keeps W_s's singular values within 1 +- margin: a gain would leave them
        own = dict(v.config)
        gained = (own.get("model.recurrent_init") not in GAINLESS_INITS
                  and own.get("model.recurrent_param", "free") == "free")
        for clip in v.clips or preset.clips:
            fixed = v.clip_values[0] if v.clip_values else None  # a paper's own threshold
            for lr, cv, gain in trials(search):
                yield (clip, 0.0 if clip == "none" else fixed or cv, lr,
                       gain if gained else 1.0)
        return
    for clip in v.clips or preset.clips:
        for lr in v.learning_rates or preset.learning_rates:
            for cv in ((v.clip_values or preset.clip_values) if clip != "none" else (0.0,)):
                yield clip, cv, lr, 1.0


def expand(preset: Preset, seed_offset: int = 0) -> list[Member]:
    """The pilot: every setting of every row on the pilot seeds (tables ``tuned_on`` another
    have none)."""
    return [Member(task, v, clip, cv, lr, seed + seed_offset, init_gain=gain,
                   clip_chosen=clip_chosen(preset, v))
            for task in preset.tasks if task.tuned_on is None
            for v in preset.variants if v.on(task)
            for clip, cv, lr, gain in _settings(preset, v) for seed in preset.pilot_seeds]


def clip_chosen(preset: Preset, v: Variant) -> bool:
    """Whether ``v``'s pilot chooses its clipping mode: a preset that chooses it, a variant on
    the preset's modes (one with its own, the SGD arm's, keeps a row per mode), more than one."""
    return preset.choose_clip and v.clips is None and len(preset.clips) > 1


def lr_grid(preset: Preset, v: Variant) -> tuple[float, ...]:
    return tuple(sorted(v.learning_rates or preset.learning_rates))


def beyond_edge(preset: Preset, m: Member) -> float | None:
    """The learning rate one grid step past the edge ``m``'s sits on (None inside the grid, or
    for a grid of one point): the grid extends once in the direction of its best point."""
    grid = lr_grid(preset, m.variant)
    if len(grid) < 2 or m.learning_rate not in (grid[0], grid[-1]):
        return None
    ratio = grid[1] / grid[0] if m.learning_rate == grid[0] else grid[-1] / grid[-2]
    lr = m.learning_rate / ratio if m.learning_rate == grid[0] else m.learning_rate * ratio
    return float(f"{lr:.3g}")


def extension(preset: Preset, best: Member, seed_offset: int = 0) -> list[Member]:
    lr = beyond_edge(preset, best)
    if lr is None:
        return []
    return [dataclasses.replace(best, learning_rate=lr, seed=s + seed_offset, phase="extend")
            for s in preset.pilot_seeds]


def confirmation(preset: Preset, chosen: Member, seed_offset: int = 0) -> list[Member]:
    """The chosen setting on the confirmation seeds: in its own table and in every table
    ``tuned_on`` it (where the variant runs there too)."""
    entries = [chosen.entry] + [t for t in preset.tasks if t.tuned_on == chosen.table
                                and chosen.variant.on(t)]
    return [dataclasses.replace(chosen, entry=e, seed=s + seed_offset, phase="confirm")
            for e in entries for s in preset.confirm_seeds]


def find(preset: Preset, table: str, variant: str) -> tuple[TaskEntry, Variant]:
    entry = next(t for t in preset.tasks if t.table == table)
    return entry, next(v for v in preset.variants if v.name == variant)


def member_config(preset: Preset, m: Member):
    """Defaults, then the preset's base, the table's and the variant's settings (and the pilot's
    own), the matched hidden size, then the axes."""
    c = config_lib.default_config()
    axes = (("seed", m.seed), ("optim.learning_rate", m.learning_rate), ("optim.clip", m.clip),
            ("optim.clip_value", m.clip_value if m.clip != "none" else 1.0))
    own = preset.pilot_config if m.phase != "confirm" else ()
    for key, value in preset.base + m.entry.settings + m.variant.config + own:
        config_lib.apply_overrides(c, {key: value})
    if m.variant.match_params_of:  # before the axes, so the search runs once per variant
        h = matched_hidden_size(c, m.variant.match_params_of)
        config_lib.apply_overrides(c, {"model.hidden_size": h})
    if m.init_gain != 1.0:
        axes += (("model.init_scale", c.model.init_scale * m.init_gain),)
    for key, value in axes:
        config_lib.apply_overrides(c, {key: value})
    return c


def matched_hidden_size(c, reference_cell: str) -> int:
    """The hidden size whose free parameter count (``model.count_params``) is closest to
    ``reference_cell``'s at ``c.model.hidden_size``; a ConfigError if none is within 5%."""
    return _matched(config_lib.config_to_json(c), reference_cell)


@functools.lru_cache(maxsize=64)
def _matched(config_json: str, reference_cell: str) -> int:
    c = config_from_dict(json.loads(config_json))
    target = _count(c, reference_cell=reference_cell)
    lo, hi = 1, 8 * c.model.hidden_size  # the count grows with H: bisect for the crossing
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _count(c, hidden_size=mid) < target else (lo, mid)
    best = min((lo, hi), key=lambda h: abs(_count(c, hidden_size=h) - target))
    got = _count(c, hidden_size=best)
    if abs(got - target) > MATCH_TOLERANCE * target:
        raise ConfigError(f"no hidden size gives {c.model.cell} the {target} free parameters of "
                          f"{reference_cell} at H={c.model.hidden_size} within 5%; the closest, "
                          f"H={best}, has {got}")
    return best


def _count(c, *, reference_cell: str | None = None, hidden_size: int | None = None) -> int:
    """Free parameters of ``c``'s model, from shapes only (nothing is computed)."""
    import jax

    from rnn_spectra.model import count_params
    from rnn_spectra.train import build

    d = c.to_dict()
    if hidden_size:
        d["model"]["hidden_size"] = hidden_size
    else:
        d["model"].update(cell=reference_cell, recurrent_init="orthogonal", init_scale=1.0)
    c = config_from_dict(d)
    exp = build(config_lib.resolve(c))
    return count_params(jax.eval_shape(exp.model.init, jax.random.PRNGKey(0)), c.model.cell)
