"""User-facing errors: the CLI turns each into one line on stderr and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user (config, workdir, checkpoint, data file): one line, exit 2."""


class ConfigError(UserError):
    """A config value or key is invalid."""


class WorkdirError(UserError):
    """A workdir or checkpoint cannot be used as asked."""


class DataError(UserError):
    """A dataset's files are missing, corrupted or cannot be downloaded."""


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> ConfigError:
    """An error for a name not in a registry, listing the valid names (closest first)."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}.{hint}")
