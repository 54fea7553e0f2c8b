"""``rnn-spectra config``: every config key with its value, its check and its meaning, one
aligned line per key (``model.hidden_size = 128  (positive)  H``), from the defaults or a file.
"""

from __future__ import annotations

import difflib

import ml_collections

from rnn_spectra import config as config_lib
from rnn_spectra.errors import ConfigError


def check_text(f) -> str:
    """What a field's value must be: its check, its choices, or else its type (``or None`` where
    None is its default)."""
    m = f.metadata
    text = m["check"] or ("|".join(m["choices"]) if m["choices"] else m["kind"].__name__)
    return text + (" or None" if f.default is None else "")


def describe(cfg: ml_collections.ConfigDict, prefix: str = "") -> str:
    """One aligned line per key of ``cfg`` that starts with ``prefix``: ``key = value  (check)
    meaning``. A prefix no key starts with is a ConfigError naming the closest keys."""
    values, fields = config_lib.flatten_dict(cfg.to_dict()), config_lib.fields()
    ordered = [k for k in fields if k in values] + sorted(set(values) - set(fields))  # as declared
    keys = [k for k in ordered if k.startswith(prefix)]
    if not keys:
        raise ConfigError(f"no config key starts with {prefix!r}{_did_you_mean(prefix, values)}")
    rows = [(k, repr(values[k]), f"({check_text(fields[k])})" if k in fields else "(?)",
             fields[k].metadata["doc"] if k in fields else "not a run setting: train refuses it")
            for k in keys]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{k:<{widths[0]}} = {v:<{widths[1]}}  {c:<{widths[2]}}  {doc}".rstrip()
                     for k, v, c, doc in rows)


def _did_you_mean(prefix: str, keys) -> str:
    """The closest keys or sections (``model``, ``control.lyapunov``) to a mistyped prefix."""
    names = sorted({k.rsplit(".", i)[0] for k in keys for i in range(k.count(".") + 1)})
    close = difflib.get_close_matches(prefix, names, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def list_config(path: str | None, prefix: str = "", overrides: dict[str, str] | None = None) -> str:
    """``describe`` of the defaults, or of the config file at ``path``, with ``--config.a.b``
    overrides applied as ``train`` applies them."""
    from rnn_spectra.config_files import load_config_file

    cfg = config_lib.default_config() if path is None else load_config_file(path)
    cfg.lock()
    config_lib.apply_overrides(cfg, overrides or {})
    return describe(cfg, prefix)
