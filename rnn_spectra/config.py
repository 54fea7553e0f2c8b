"""Configs: ``configs/*.py`` files return an ``ml_collections.ConfigDict``; overrides come as
``--config.a.b=value``; ``resolve`` validates the whole thing and freezes it into dataclasses.

ConfigDict lives at the edges only (files, CLI, config.json); model, task and training code get
the frozen dataclasses below.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import json
import os
from typing import Any

import ml_collections
from ml_collections import config_dict

from rnn_spectra.errors import ConfigError, unknown_name
from rnn_spectra.model import ModelConfig
from rnn_spectra.parallel import ParallelConfig, check_config as check_parallel


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    name: str = "adding"
    seq_len: int = 100
    permuted: bool = False  # dataset tasks: one fixed pixel permutation (expRNN's seed 92916)
    data_dir: str | None = None  # pixel_mnist: folder of the MNIST files (None: the default cache)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    momentum: float = 0.9
    rmsprop_decay: float = 0.9
    clip: str = "global_norm"
    clip_value: float = 1.0
    orthogonal_lr_factor: float = 0.1  # expRNN: learning rate of the skew generator A, relative


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    eval_every: int = 200
    eval_batches: int = 4
    eval_batch_size: int = 256
    log_every: int = 50
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class SpectralConfig:
    every: int = 200  # steps between spectral measurements (0: off)
    probe_batch_size: int = 4  # fixed probe sequences the measurements average over
    num_lags: int = 12  # log-spaced lags at which log ||dh_T/dh_t|| is recorded
    lyapunov_k: int = 8  # top Lyapunov exponents recorded
    grad_flow_points: int = 100  # most time steps of the gradient-flow profile kept per row


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 0  # steps between checkpoints (0: only at the end)
    every_minutes: float = 0.0  # minutes between checkpoints (0: off)
    keep: int = 3  # most recent checkpoints kept (plus the best by eval loss)


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


SECTIONS = {
    "task": TaskConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "spectral": SpectralConfig,
    "checkpoint": CheckpointConfig,
    "parallel": ParallelConfig,
}
OPTIMIZERS = ("adam", "rmsprop", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "warmup_constant")
CLIPS = ("none", "global_norm", "value", "agc")


def default_config() -> ml_collections.ConfigDict:
    """Every key a run understands, with its default; config files start from this."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # PRNG seed: params, data stream and eval set all derive from it
    c.task = ml_collections.ConfigDict()
    c.task.name = "adding"  # adding | copying | digits | pixel_mnist
    # T: adding length / copying delay (copying sequences are T + 20 long); datasets: the variant,
    # digits 64 (pixels) or 8 (rows), pixel_mnist 784 (pixels), 196 (14x14 pixels) or 28 (rows)
    c.task.seq_len = 100
    c.task.permuted = False  # digits / pixel_mnist: fixed pixel permutation (permuted MNIST)
    # pixel_mnist's files (None: $RNN_SPECTRA_DATA/mnist, else ~/.cache/rnn_spectra/mnist)
    c.task.data_dir = config_dict.placeholder(str)
    c.model = ml_collections.ConfigDict()
    c.model.cell = "tanh_rnn"  # tanh_rnn | relu_rnn | irnn | lstm | gru | indrnn | antisymmetric | exprnn
    c.model.hidden_size = 128  # H
    # orthogonal | identity | normal | np_rnn | uniform (IndRNN) | henaff | cayley (expRNN)
    c.model.recurrent_init = config_dict.placeholder(str)
    c.model.init_scale = config_dict.placeholder(float)  # gain of W_s's init (None: cell default)
    c.model.input_init = "normal"  # normal | lecun_uniform | glorot_uniform (fan-in scaled)
    c.model.input_scale = 1.0  # std multiplier of the input kernel
    c.model.bias_init = 0.0  # constant bias
    c.model.forget_bias = 1.0  # LSTM forget-gate bias at init
    c.model.unroll = 0  # lax.scan unroll factor, speed only (0: auto, 8 on GPU/TPU, 1 on CPU)
    c.model.remat = False  # jax.checkpoint each step (memory for long T)
    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"  # adam | rmsprop | sgd
    c.optim.learning_rate = 1e-3  # peak learning rate
    c.optim.schedule = "constant"  # constant | cosine | warmup_cosine | warmup_constant
    c.optim.warmup_steps = 0  # linear warmup length (warmup_* schedules)
    c.optim.momentum = 0.9  # sgd momentum (0 = plain SGD)
    c.optim.rmsprop_decay = 0.9  # RMSProp decay of the squared-gradient average
    c.optim.clip = "global_norm"  # none | global_norm (Pascanu) | value (element-wise) | agc
    c.optim.clip_value = 1.0  # max global norm / max |g_i| / AGC ratio
    c.optim.orthogonal_lr_factor = 0.1  # expRNN: lr of its skew parameter A = this x learning_rate
    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000  # optimizer steps
    c.train.batch_size = 64
    c.train.eval_every = 200  # steps between evals on the held-out batches (and at the end)
    c.train.eval_batches = 4  # held-out batches per eval (a fixed set, disjoint from training)
    c.train.eval_batch_size = 256
    c.train.log_every = 50  # steps between host pulls of the train metrics
    c.train.progress = True  # progress bar on stderr
    c.spectral = ml_collections.ConfigDict()
    c.spectral.every = 200  # steps between spectral measurements -> spectra.jsonl (0: off)
    c.spectral.probe_batch_size = 4  # fixed probe sequences the measurements use
    c.spectral.num_lags = 12  # log-spaced lags for log ||dh_T/dh_t||
    c.spectral.lyapunov_k = 8  # top Lyapunov exponents recorded
    c.spectral.grad_flow_points = 100  # gradient-flow profile: at most this many evenly spaced t
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 0  # steps between Orbax checkpoints (0: only at the end)
    c.checkpoint.every_minutes = 0.0  # minutes between checkpoints (0: off)
    c.checkpoint.keep = 3  # most recent checkpoints kept (plus the best by eval loss)
    c.parallel = ml_collections.ConfigDict()
    # auto: a run is data-parallel and a study shards its members when there are several
    # devices | data (batch sharded, params replicated) | sweep (study members sharded) | none
    c.parallel.mode = "auto"
    c.parallel.num_devices = 0  # devices in the mesh (0: all, over every process)
    return c


# ----------------------------------------------------------------------------- files and overrides
def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Import ``path`` and call its ``get_config()``; errors name the file."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist (try configs/adding.py)")
    spec = importlib.util.spec_from_file_location("_rnn_spectra_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a user's file: report it, do not dump a traceback
        raise ConfigError(f"config file {path!r} failed to import: {type(e).__name__}: {e}") from e
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file {path!r} has no get_config() function")
    cfg = module.get_config()
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict")
    return cfg


def flat_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            keys += flat_keys(v, f"{prefix}{k}.")
        else:
            keys.append(prefix + k)
    return keys


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
    if value is None and current is None:
        return None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if want is not None and not isinstance(value, want):
        raise ConfigError(f"--config.{key} expects a {want.__name__}, got {text!r}")
    return value


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: dict[str, str]) -> None:
    """Set ``a.b=value`` strings in place; unknown keys are errors naming the closest keys."""
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
        with node.unlocked():
            node[leaf] = _parse_value(text, node[leaf], key, ref_type)


def config_to_json(cfg: ml_collections.ConfigDict) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)


def config_from_workdir(workdir: str) -> ml_collections.ConfigDict:
    """The run config stored in ``workdir/config.json``, on top of today's defaults (keys added
    since the run was made take their default values)."""
    from rnn_spectra import workdir as wd

    path = wd.path(workdir, wd.CONFIG)
    cfg = default_config()
    try:
        cfg.update_from_flattened_dict(_flatten_dict(wd.read_json(path)))
    except (KeyError, AttributeError, TypeError) as e:
        raise ConfigError(f"{path} is not a valid run config: {e}") from None
    return cfg


def _flatten_dict(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten_dict(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


# ----------------------------------------------------------------------------- validation
def _section(cls, name: str, values: ml_collections.ConfigDict):
    fields = {f.name for f in dataclasses.fields(cls)}
    extra = set(values.keys()) - fields
    if extra:
        key = sorted(extra)[0]
        close = difflib.get_close_matches(key, sorted(fields), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(f'{name}.{c}' for c in close)}?" if close else ""
        raise ConfigError(f"unknown config key {name}.{key}{hint}")
    return cls(**{k: v for k, v in values.items()})


def _positive(name: str, value, kind=int) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive {kind.__name__}, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise ConfigError(f"{name} must be a positive int, got {value!r}")


def _choice(name: str, value, valid) -> None:
    if value not in valid:
        raise unknown_name(name, value, valid)


def resolve(cfg: ml_collections.ConfigDict) -> RunConfig:
    """Validate a ConfigDict and freeze it. Unknown keys and bad values raise ConfigError."""
    from rnn_spectra.cells import CELLS, INPUT_INITS, RECURRENT_INITS
    from rnn_spectra.tasks import TASKS

    known = {"seed", *SECTIONS}
    for key in cfg.keys():
        if key not in known:
            raise unknown_name("config section", key, known)
    sections = {name: _section(cls, name, cfg.get(name, {})) for name, cls in SECTIONS.items()}
    t, m, o, tr = sections["task"], sections["model"], sections["optim"], sections["train"]
    sp, ck = sections["spectral"], sections["checkpoint"]
    _choice("task", t.name, TASKS)
    _choice("cell", m.cell, CELLS)
    if m.recurrent_init is not None:
        _choice("recurrent init", m.recurrent_init, RECURRENT_INITS)
    _choice("input init", m.input_init, INPUT_INITS)
    _choice("optimizer", o.name, OPTIMIZERS)
    _choice("learning-rate schedule", o.schedule, SCHEDULES)
    _choice("clipping", o.clip, CLIPS)
    if not isinstance(t.seq_len, int) or isinstance(t.seq_len, bool) or t.seq_len < 2:
        raise ConfigError(f"task.seq_len must be an integer >= 2, got {t.seq_len!r}")
    for name, value in [
        ("model.hidden_size", m.hidden_size),
        ("train.steps", tr.steps),
        ("train.batch_size", tr.batch_size),
        ("train.eval_every", tr.eval_every),
        ("train.eval_batches", tr.eval_batches),
        ("train.eval_batch_size", tr.eval_batch_size),
        ("train.log_every", tr.log_every),
        ("spectral.probe_batch_size", sp.probe_batch_size),
        ("spectral.num_lags", sp.num_lags),
        ("spectral.lyapunov_k", sp.lyapunov_k),
        ("checkpoint.keep", ck.keep),
    ]:
        _positive(name, value)
    for name, value in [
        ("model.unroll", m.unroll),  # 0: auto (model.default_unroll)
        ("optim.warmup_steps", o.warmup_steps),
        ("spectral.every", sp.every),
        ("checkpoint.every_steps", ck.every_steps),
        ("checkpoint.every_minutes", ck.every_minutes),
    ]:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value!r}")
    _positive("optim.learning_rate", o.learning_rate, float)
    _positive("optim.orthogonal_lr_factor", o.orthogonal_lr_factor, float)
    if o.clip != "none":
        _positive("optim.clip_value", o.clip_value, float)
    if m.init_scale is not None and m.init_scale <= 0:
        raise ConfigError(f"model.init_scale must be positive, got {m.init_scale!r}")
    check_parallel(sections["parallel"])
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.get("seed"), bool):
        raise ConfigError(f"seed must be an integer, got {cfg.get('seed')!r}")
    return RunConfig(seed=cfg.seed, **sections)
