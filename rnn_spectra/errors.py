"""One-line outcomes: the CLI turns each into one line on stderr and an exit code a scheduler
can act on (``EXIT_CODES``): 2 bad input (fix the command), 74 an I/O failure such as a full disk
(fix the machine, then run the same command: nothing earlier is lost), 75 interrupted (run the
same command to resume)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


# 74 and 75 are sysexits.h's EX_IOERR and EX_TEMPFAIL; 2 is argparse's usage error.
BAD_INPUT, IO_FAILURE, INTERRUPTED = 2, 74, 75
EXIT_CODES = {0: "done", BAD_INPUT: "bad input", IO_FAILURE: "I/O failure (e.g. a full disk)",
              INTERRUPTED: "interrupted: run the same command to resume",
              130: "Ctrl-C outside train/study"}


class UserError(Exception):
    """Bad input from the user (config, workdir, checkpoint, data file): one line, exit 2."""

    exit_code = BAD_INPUT


class StorageError(Exception):
    """The file system failed a write or read that should have worked (full disk, quota, I/O
    error): one line, exit 74. Not bad input: the same command works once the disk is fixed."""

    exit_code = IO_FAILURE


class Interrupted(BaseException):
    """SIGINT/SIGTERM stopped the command before it finished (during set-up, or a study's group
    checkpointed and stopped): one line, exit 75 (resume by running the same command).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way swallows
    it."""

    exit_code = INTERRUPTED


class ConfigError(UserError):
    """A config value or key is invalid."""


class WorkdirError(UserError):
    """A workdir or checkpoint cannot be used as asked."""


class SpectralInputError(UserError, ValueError):
    """Arrays whose shapes do not fit the cell or the request (a ValueError too, for library users)."""


class DataError(UserError):
    """A dataset's files are missing, corrupted or cannot be downloaded."""


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> ConfigError:
    """An error for a name not in a registry, listing the valid names (closest first)."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}.{hint}")
