"""The one source of truth for a run's settings: typed, frozen config sections.

Each section is a dataclass whose fields carry their default, a one-line meaning and the check
their value must pass, which the section runs when it is made: code that takes a section never
checks its values again. ``default_config()`` (the ConfigDict that config files start from) is
derived from them, ``apply_overrides`` sets ``--config.a.b=value`` strings, and ``resolve``
checks every value and freezes the result into a ``RunConfig``. This module imports no registry:
names (cells, inits, tasks, optimizers) are checked where they are resolved (``cells``,
``tasks``, ``optim``, reached through ``train.build``), with the same did-you-mean errors.

ConfigDict lives at the edges only (files, CLI, config.json); model, task and training code get
the frozen dataclasses.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import math
from typing import Any, ClassVar

import ml_collections
from ml_collections import config_dict

from rnn_spectra.errors import ConfigError, unknown_name


def _f(default, doc: str, check: str | None = None, kind: type | None = None, choices=None):
    """A config field: ``check`` is one of CHECKS; ``kind`` the type of a field whose default is
    None; ``choices`` a fixed set of words (not a registry: those are checked where resolved)."""
    return dataclasses.field(default=default, metadata={
        "doc": doc, "check": check, "kind": kind or type(default), "choices": choices})


# ----------------------------------------------------------------------------- validation
FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max, without importing numpy
def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(key: str, value, f: dataclasses.Field) -> None:
    """One field's value against its declared kind and check. NaN and inf fail every check."""
    kind, check, choices = f.metadata["kind"], f.metadata["check"], f.metadata["choices"]
    if value is None and f.default is None:
        return
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if kind in (int, float):
        if kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if not _is_number(value) or not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        if kind is float and abs(value) > FLOAT32_MAX:  # finite in Python, inf where it is used
            raise ConfigError(f"{key}={value!r} is infinite in float32, the precision training "
                              f"uses; give a value of magnitude <= {FLOAT32_MAX:.4g}")
    if check == "positive" and not value > 0:
        raise ConfigError(f"{key} must be a positive {kind.__name__}, got {value!r}")
    if check == "nonnegative" and not value >= 0:
        raise ConfigError(f"{key} must be >= 0, got {value!r}")
    if check == "fraction" and not 0 <= value < 1:
        raise ConfigError(f"{key} must be a fraction in [0, 1), got {value!r}")
    if check == "int>=2" and not value >= 2:
        raise ConfigError(f"{key} must be an integer >= 2, got {value!r}")
    if check == "0|int>=2" and not (value == 0 or value >= 2):
        raise ConfigError(f"{key} must be 0 or an integer >= 2, got {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


def _nested(f: dataclasses.Field) -> bool:
    """A field that is itself a section (``control.lyapunov``)."""
    return dataclasses.is_dataclass(f.metadata["kind"])


class _Section:
    """Base of the sections: a section checks its values when it is made (by ``resolve`` or by
    code that builds one), so the code that takes a section never checks them again."""

    _name: ClassVar[str]

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if not _nested(f):
                _check(f"{self._name}.{f.name}", getattr(self, f.name), f)


@dataclasses.dataclass(frozen=True)
class TaskConfig(_Section):
    _name: ClassVar[str] = "task"
    name: str = _f("adding", "adding | copying | digits | pixel_mnist")
    seq_len: int = _f(100, "T: adding length / copying delay (copying sequences are T + 20 long); "
                      "digits 64 (pixels) or 8 (rows), pixel_mnist 784, 196 (14x14) or 28 (rows)",
                      "int>=2")
    permuted: bool = _f(False, "digits / pixel_mnist: one fixed pixel permutation (expRNN's seed 92916)")
    data_dir: str | None = _f(None, "pixel_mnist's files (None: $RNN_SPECTRA_DATA/mnist, else "
                              "~/.cache/rnn_spectra/mnist)", kind=str)


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    _name: ClassVar[str] = "model"
    cell: str = _f("tanh_rnn", "tanh_rnn | relu_rnn | irnn | lstm | gru | indrnn | antisymmetric | exprnn")
    hidden_size: int = _f(128, "H", "positive")
    recurrent_init: str | None = _f(None, "orthogonal | identity | normal | np_rnn | indrnn | uniform "
                                    "(IndRNN) | henaff | cayley (expRNN); None: the cell's default", kind=str)
    init_scale: float | None = _f(None, "gain of W_s's init (None: the cell's default)", "positive",
                                  kind=float)
    input_init: str = _f("normal", "normal | lecun_uniform | glorot_uniform (fan-in scaled) | "
                         "normal_std (N(0, input_scale^2): IndRNN's official 0.001)")
    input_scale: float = _f(1.0, "std multiplier of the input kernel", "nonnegative")
    bias_init: float = _f(0.0, "constant bias", "finite")
    forget_bias: float = _f(1.0, "LSTM forget-gate bias at init", "finite")
    epsilon: float = _f(0.1, "AntisymmetricRNN only: step size eps of its forward-Euler update",
                        "positive")
    gamma: float = _f(0.5, "AntisymmetricRNN only: diffusion gamma. Stable (|eig J| <= 1) while "
                      "gamma >= (1 - sqrt(1 - eps^2 w^2)) / eps ~ eps w^2 / 2, w = max |eig(W - W^T)| "
                      "(~2.9 x init_scale for its normal init): 0.5 covers w <= 3.12 at eps 0.1",
                      "positive")
    unroll: int = _f(0, "lax.scan unroll factor, for speed; results agree to float32 rounding "
                        "(0: auto, 8 on GPU/TPU, 1 on CPU)", "nonnegative")
    remat: bool = _f(False, "jax.checkpoint each step (memory for long T, ~1 extra forward)")
    recurrent_param: str = _f("free", "free | svd_margin: W_s = U diag(1 + margin tanh p) V^T, U and V "
                              "orthogonal (Vorontsov et al. 2017; tanh_rnn, relu_rnn, irnn)",
                              choices=("free", "svd_margin"))
    margin: float = _f(0.1, "svd_margin: every singular value of W_s in [1 - margin, 1 + margin] "
                       "(0: W_s orthogonal; at most 1)", "nonnegative")


@dataclasses.dataclass(frozen=True)
class OptimConfig(_Section):
    _name: ClassVar[str] = "optim"
    name: str = _f("adam", "adam | rmsprop | sgd")
    learning_rate: float = _f(1e-3, "peak learning rate", "positive")
    schedule: str = _f("constant", "constant | cosine | warmup_cosine | warmup_constant")
    warmup_steps: int = _f(0, "linear warmup length (warmup_* schedules)", "nonnegative")
    momentum: float = _f(0.9, "sgd momentum (0 = plain SGD)", "nonnegative")
    rmsprop_decay: float = _f(0.9, "RMSProp decay of the squared-gradient average", "nonnegative")
    clip: str = _f("global_norm", "none | global_norm (Pascanu) | value (element-wise) | agc")
    clip_value: float = _f(1.0, "max global norm / max |g_i| / AGC ratio", "positive")
    orthogonal_lr_factor: float = _f(0.1, "expRNN: lr of its skew parameter A = this x learning_rate",
                                     "positive")


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
    _name: ClassVar[str] = "train"
    steps: int = _f(1000, "optimizer steps", "positive")
    batch_size: int = _f(64, "sequences per step", "positive")
    eval_every: int = _f(200, "steps between evals on the held-out batches (and at the end)", "positive")
    eval_batches: int = _f(4, "held-out batches per eval (a fixed set, disjoint from training)", "positive")
    eval_batch_size: int = _f(256, "sequences per held-out batch", "positive")
    log_every: int = _f(50, "steps between host pulls of the train metrics", "positive")
    progress: bool = _f(True, "progress bar on stderr")


@dataclasses.dataclass(frozen=True)
class SpectralConfig(_Section):
    _name: ClassVar[str] = "spectral"
    every: int = _f(200, "steps between spectral measurements -> spectra.jsonl (0: off)", "nonnegative")
    probe_batch_size: int = _f(4, "fixed probe sequences the measurements average over", "positive")
    num_lags: int = _f(12, "log-spaced lags at which log ||dh_T/dh_t|| is recorded", "positive")
    lyapunov_k: int = _f(8, "top Lyapunov exponents recorded", "positive")
    lyapunov_discard: float = _f(0.25, "burn-in, a fraction of T in [0, 1): the Lyapunov exponents "
                                 "and the per-step averages skip the leading zero-Jacobian steps and "
                                 "then round(this x T) more", "fraction")
    grad_flow_points: int = _f(100, "gradient-flow profile: at most this many evenly spaced t",
                               "int>=2")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(_Section):
    _name: ClassVar[str] = "checkpoint"
    every_steps: int = _f(0, "steps between Orbax checkpoints (0: only at the end)", "nonnegative")
    every_minutes: float = _f(0.0, "minutes between checkpoints (0: off)", "nonnegative")
    keep: int = _f(3, "most recent checkpoints kept (plus the best by eval loss)", "positive")


@dataclasses.dataclass(frozen=True)
class ParallelConfig(_Section):
    _name: ClassVar[str] = "parallel"
    mode: str = _f("auto", "auto: a run is data-parallel and a study shards its members when there "
                   "are several devices | data (batch sharded, params replicated) | sweep (study "
                   "members sharded) | none", choices=("auto", "none", "data", "sweep"))
    num_devices: int = _f(0, "devices in the mesh (0: all, over every process)", "nonnegative")


@dataclasses.dataclass(frozen=True)
class LogConfig(_Section):
    _name: ClassVar[str] = "log"
    tensorboard: bool = _f(False, "also write TensorBoard event files to WORKDIR/tensorboard/ "
                           "(needs tensorboardX: pip install 'rnn_spectra[tensorboard]')")
    wandb: bool = _f(False, "also log to Weights & Biases: the config as the run's config, metrics and "
                     "spectra as scalars, singular values as histograms; files under WORKDIR/wandb/ "
                     "(needs wandb: pip install 'rnn_spectra[wandb]')")
    wandb_project: str = _f("rnn_spectra", "W&B project")
    wandb_entity: str | None = _f(None, "W&B entity (user or team; None: your default)", kind=str)
    wandb_mode: str | None = _f(None, "online (sync as it runs) | offline (write WORKDIR/wandb/ only; "
                                "`wandb sync` later) | disabled; None: $WANDB_MODE, else online",
                                kind=str, choices=("online", "offline", "disabled"))


@dataclasses.dataclass(frozen=True)
class LyapunovControlConfig(_Section):
    _name: ClassVar[str] = "control.lyapunov"
    weight: float = _f(0.0, "loss += weight * mean_i (lambda_i - target)^2 over the top k Lyapunov "
                       "exponents of the current params on the batch (0: off)", "nonnegative")
    target: float = _f(0.0, "target exponent, nats per step", "finite")
    k: int = _f(1, "top exponents penalised (<= the state size: H, 2H for the LSTM)", "positive")
    seq_len: int = _f(50, "probe window: the first min(this, sequence length) steps; 0: the whole "
                      "sequence, the window the monitor's lambda_1 is measured on", "0|int>=2")
    probes: int = _f(4, "batch sequences the exponents are averaged over (<= the batch)", "positive")
    discard: float = _f(0.25, "burn-in, a fraction of the window (as spectral.lyapunov_discard)",
                        "fraction")

    def window(self, length: int) -> tuple[int, int]:
        """(T, discard): the regulariser's window on sequences of ``length`` steps and its burn-in
        steps, both static: the exponents average steps discard .. T-1."""
        T = length if self.seq_len == 0 else min(self.seq_len, length)
        return T, min(int(round(self.discard * T)), T - 1)
    every: int = _f(1, "apply at the steps divisible by this", "positive")
    until: int = _f(0, "apply only before this step (0: always); may change on resume", "nonnegative")


@dataclasses.dataclass(frozen=True)
class ControlConfig(_Section):
    _name: ClassVar[str] = "control"
    lyapunov: LyapunovControlConfig = _f(LyapunovControlConfig(), "the Lyapunov regulariser")
    max_singular_value: float = _f(0.0, "clip W_s's singular values to <= this after every update "
                                   "(tanh_rnn, relu_rnn, irnn; 0: off)", "nonnegative")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    seed: int
    task: TaskConfig
    model: ModelConfig
    optim: OptimConfig
    train: TrainConfig
    spectral: SpectralConfig
    checkpoint: CheckpointConfig
    parallel: ParallelConfig
    log: LogConfig = LogConfig()
    control: ControlConfig = ControlConfig()


SECTIONS = {
    "task": TaskConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig,
    "spectral": SpectralConfig, "checkpoint": CheckpointConfig, "parallel": ParallelConfig,
    "log": LogConfig, "control": ControlConfig,
}
# Keys added with issue #15 whose default switches their feature off: a config that predates them
# means these values (a config hash may leave them out at these values).
OFF_BY_DEFAULT = {
    "model.recurrent_param": "free", "model.margin": 0.1, "control.max_singular_value": 0.0,
    **{f"control.lyapunov.{f.name}": f.default for f in dataclasses.fields(LyapunovControlConfig)},
}
SEED_FIELD = _f(0, "PRNG seed: params, data stream, probe batch and eval sets all derive from it")


def fields() -> dict[str, dataclasses.Field]:
    """``{"section.key": its field}`` for every key (default, doc, check, kind, choices)."""
    def walk(prefix: str, cls) -> dict:
        return {k: v for f in dataclasses.fields(cls) for k, v in (
            walk(f"{prefix}{f.name}.", f.metadata["kind"]) if _nested(f)
            else {f"{prefix}{f.name}": f}).items()}
    return {"seed": SEED_FIELD, **{k: v for name, cls in SECTIONS.items()
                                   for k, v in walk(f"{name}.", cls).items()}}


def field_docs() -> dict[str, str]:
    """``{"section.key": meaning}`` for every key (the help a config file's reader needs)."""
    return {k: f.metadata["doc"] for k, f in fields().items()}


def default_config() -> ml_collections.ConfigDict:
    """Every key a run understands, with its default (derived from the sections above)."""
    def section(cls) -> ml_collections.ConfigDict:
        out = ml_collections.ConfigDict()
        for f in dataclasses.fields(cls):
            out[f.name] = (section(f.metadata["kind"]) if _nested(f) else
                           config_dict.placeholder(f.metadata["kind"]) if f.default is None
                           else f.default)
        return out

    c = ml_collections.ConfigDict()
    c.seed = 0
    for name, cls in SECTIONS.items():
        c[name] = section(cls)
    return c


# ----------------------------------------------------------------------------- overrides
def flat_keys(cfg: ml_collections.ConfigDict) -> list[str]:
    return list(flatten_dict(cfg.to_dict()))


def _parse_value(text: str, current: Any, key: str, field_type: type | None) -> Any:
    want = type(current) if current is not None else field_type
    if want is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{key} expects true or false, got {text!r}")
    if want is str:
        return None if text in ("None", "none", "") and current is None else text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
        if want is float:  # "nan", "inf": parsed, so that resolve() names the key it refuses
            try:
                value = float(text)
            except ValueError:
                pass
    if value is None and current is None:
        return None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if want is not None and not isinstance(value, want):
        raise ConfigError(f"--config.{key} expects a {want.__name__}, got {text!r}")
    return value


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
    """Set ``{"a.b": value}`` in place (strings are parsed as the key's type); unknown keys are
    errors naming the closest keys."""
    valid = flat_keys(cfg)
    for key, text in overrides.items():
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join('--config.' + c for c in close)}?" if close else ""
            raise ConfigError(f"unknown config key --config.{key}{hint}")
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        ref_type = node.get_ref(leaf).get_type() if node[leaf] is None else None
        value = _parse_value(text, node[leaf], key, ref_type) if isinstance(text, str) else text
        with node.unlocked():
            node[leaf] = value


def config_to_json(cfg: ml_collections.ConfigDict) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)


def flatten_dict(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_dict(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _section(cls, name: str, values) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = set(values.keys()) - set(fields)
    if extra:
        key = sorted(extra)[0]
        close = difflib.get_close_matches(key, sorted(fields), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(f'{name}.{c}' for c in close)}?" if close else ""
        raise ConfigError(f"unknown config key {name}.{key}{hint}")
    out = {}
    for k, v in values.items():
        if _nested(fields[k]):
            if not hasattr(v, "keys"):
                raise ConfigError(f"{name}.{k} is a section of keys, got {v!r}")
            v = _section(fields[k].metadata["kind"], f"{name}.{k}", v)
        out[k] = v
    return cls(**out)  # checks the values (``_Section``)


def resolve(cfg: ml_collections.ConfigDict) -> RunConfig:
    """Check every value of a ConfigDict and freeze it. Unknown keys and bad values raise
    ConfigError naming the key; names are checked when ``train.build`` resolves them."""
    known = {"seed", *SECTIONS}
    for key in cfg.keys():
        if key not in known:
            raise unknown_name("config section", key, known)
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    sections = {name: _section(cls, name, cfg.get(name, {})) for name, cls in SECTIONS.items()}
    return RunConfig(seed=seed, **sections)
