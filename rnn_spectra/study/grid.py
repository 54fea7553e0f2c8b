"""What a preset expands to: one ``Member`` per (table, variant, clipping, learning rate, clip
threshold, seed), and the config each member trains with. Plain functions of the preset, shared
by the study's run (what to train) and its member checks (what each member must be).
"""

from __future__ import annotations

import dataclasses
import os

from rnn_spectra import config as config_lib
from rnn_spectra.study.presets import Preset, TaskEntry, Variant


@dataclasses.dataclass(frozen=True)
class Member:
    entry: TaskEntry
    variant: Variant
    clip: str
    clip_value: float
    learning_rate: float
    seed: int

    @property
    def task(self) -> str:
        return self.entry.name

    @property
    def table(self) -> str:
        return self.entry.table

    @property
    def row(self) -> str:
        """Variant x clipping: one row of a table."""
        return f"{self.variant.name}/clip={self.clip}"

    @property
    def setting(self) -> str:
        cv = f"_c{self.clip_value:g}" if self.clip != "none" else ""
        return f"lr{self.learning_rate:g}{cv}"

    @property
    def relpath(self) -> str:
        return os.path.join("runs", self.table, self.row.replace("/", "__"), f"{self.setting}_s{self.seed}")


def expand(preset: Preset) -> list[Member]:
    members = []
    for task in preset.tasks:
        for v in preset.variants:
            if v.tasks is not None and task.name not in v.tasks:
                continue
            for clip in v.clips or preset.clips:
                for lr in v.learning_rates or preset.learning_rates:
                    for cv in ((v.clip_values or preset.clip_values) if clip != "none" else (0.0,)):
                        for seed in preset.seeds:
                            members.append(Member(task, v, clip, cv, lr, seed))
    return members


def member_config(preset: Preset, m: Member):
    """Defaults, then the preset's base, the table's and the variant's settings, then the axes."""
    c = config_lib.default_config()
    axes = (("seed", m.seed), ("optim.learning_rate", m.learning_rate), ("optim.clip", m.clip),
            ("optim.clip_value", m.clip_value if m.clip != "none" else 1.0))
    for key, value in preset.base + m.entry.settings + m.variant.config + axes:
        config_lib.apply_overrides(c, {key: value})
    return c
