"""A user's config file: a Python file whose ``get_config()`` returns the ConfigDict a run starts
from. Importing it, and the one-line errors that name the file (and an example that exists)
when it is missing or broken; ``load_run_config``: the config a ``train`` command runs; a
workdir's stored config.json read back (``config_from_workdir``, ``config_from_dict``).
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from rnn_spectra import config as config_lib
from rnn_spectra import workdir as wd
from rnn_spectra.errors import ConfigError


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Import ``path`` and call its ``get_config()``; errors name the file."""
    file, colon, _ = path.rpartition(":")
    if not os.path.isfile(path) and colon and os.path.isfile(file):
        raise ConfigError(f"config file {path!r}: ml_collections' FILE:ARG form is not supported "
                          f"(get_config() takes no argument); give {file!r} and set keys with "
                          "--config.KEY=VALUE")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist{_config_hint(path)}")
    spec = importlib.util.spec_from_file_location("_rnn_spectra_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a user's file: report it, do not dump a traceback
        raise ConfigError(f"config file {path!r} failed to import: {type(e).__name__}: {e}") from e
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file {path!r} has no get_config() function")
    try:
        cfg = module.get_config()
    except Exception as e:  # noqa: BLE001 - the user's code: one line, not a traceback
        raise ConfigError(f"config file {path!r}: get_config() raised {type(e).__name__}: {e}") from e
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict")
    return cfg


def load_run_config(config_path: str | None, workdir: str,
                    overrides: dict[str, str]) -> ml_collections.ConfigDict:
    """The config to run: the file (+ overrides), or an existing workdir's config.json to resume.
    Its values and names are checked once, by the training loop, before the workdir is touched."""
    if config_path is None:
        if not wd.is_run(workdir):
            raise ConfigError(f"--config is required: {workdir} is not an existing run to resume")
        cfg = config_from_workdir(workdir)
    else:
        cfg = load_config_file(config_path)
    cfg.lock()
    config_lib.apply_overrides(cfg, overrides)
    return cfg


# The repository's example configs, when the package runs from a checkout (editable install).
REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _config_hint(path: str) -> str:
    """Only a path that exists from the current directory (so never the one that just failed):
    the same file name, or adding.py, in ./configs or else in the repository's configs/."""
    name = os.path.basename(path) or "adding.py"
    for folder in ("configs", REPO_CONFIGS):
        for candidate in (os.path.join(folder, name), os.path.join(folder, "adding.py")):
            if os.path.isfile(candidate):
                return f" (try {candidate})"
    if os.path.isdir(REPO_CONFIGS):
        return f" (the example configs are in {REPO_CONFIGS})"
    return " (give the path of a Python file that defines get_config())"


# Keys added after runs were recorded, whose absence from a stored config means the value the code
# had then rather than today's default: AntisymmetricRNN's fixed eps 0.1 and gamma 0.01, the
# Lyapunov exponents averaged from step 0 (issue #14).
LEGACY_VALUES = {"model.epsilon": 0.1, "model.gamma": 0.01, "spectral.lyapunov_discard": 0.0}


def config_from_dict(d: dict, where: str = "config") -> ml_collections.ConfigDict:
    """A stored config dict on top of today's defaults (keys added since take their defaults,
    except ``LEGACY_VALUES``: what a run recorded before that key existed used)."""
    cfg = config_lib.default_config()
    try:
        cfg.update_from_flattened_dict({**LEGACY_VALUES, **config_lib.flatten_dict(d)})
    except (KeyError, AttributeError, TypeError) as e:
        raise ConfigError(f"{where} is not a valid run config: {e}") from None
    return cfg


def config_from_workdir(workdir: str) -> ml_collections.ConfigDict:
    """The run config stored in ``workdir/config.json``, on top of today's defaults."""
    path = wd.path(workdir, wd.CONFIG)
    return config_from_dict(wd.read_json(path), path)
