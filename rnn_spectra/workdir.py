"""The files of a run's workdir: config.json, metrics.jsonl, spectra.jsonl, summary.json.

A workdir is the whole record of a run; everything downstream reads only these files and the
Orbax checkpoints beside them. Writes of whole files are atomic (temp file + rename) so a kill
at any moment leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from typing import Any, Iterable

from rnn_spectra.errors import ConfigError, StorageError, WorkdirError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SPECTRA = "spectra.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars/arrays to Python, non-finite floats to strings ("nan", "inf")."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


# The machine's fault, not the command's: the same command works once they are fixed (exit 74).
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def free_space(path: str) -> str:
    """"12.3 MiB free" on the file system that holds ``path`` (or its nearest existing parent)."""
    where = os.path.abspath(path)
    while not os.path.exists(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    try:
        return f"{human_bytes(shutil.disk_usage(where).free)} free"
    except OSError:
        return "free space unknown"


def storage_error(path: str, doing: str, reason: str) -> StorageError:
    """One line naming the path, what failed and the free space there (exit 74)."""
    return StorageError(f"cannot {doing} {path}: {reason} ({free_space(path)} on that file "
                        "system); free some space, then run the same command again")


def io_error(path: str, doing: str, e: OSError, hint: str) -> WorkdirError | StorageError:
    """A failed file operation as a one-line error: StorageError (exit 74) when the disk is at
    fault (full, quota, I/O error), else WorkdirError (exit 2) with ``hint``."""
    return _fail(path, doing, e, hint)


def _fail(path: str, doing: str, e: OSError, hint: str) -> WorkdirError | StorageError:
    if e.errno in STORAGE_ERRNOS:
        return storage_error(path, doing, e.strerror or str(e))
    return WorkdirError(f"cannot {doing} {path}: {e.strerror or e}; {hint}")


def make_dir(path: str, what: str) -> None:
    """``path`` as a directory (made if missing), or one line saying why not: a file there, or a
    link to a folder that does not exist (os.makedirs would raise FileExistsError on both)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        if os.path.islink(path) and not os.path.exists(path):
            raise WorkdirError(f"--workdir {path} is a link to {os.readlink(path)}, which does not "
                               "exist; create that directory or give another --workdir") from None
        raise io_error(path, f"create {what}", e,
                       "give a --workdir that is a directory or does not exist yet") from None


def write_json(path: str, obj: Any) -> None:
    """Atomic: a kill at any moment leaves the old file or the new one."""
    write_text(path, json.dumps(_clean(obj), indent=2, sort_keys=True) + "\n")


def write_text(path: str, text: str) -> None:
    """Atomic: a kill at any moment leaves the old file or the new one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise _fail(path, "write", e, "check the workdir's permissions and free space") from None


def read_json(path: str, hint: str = "restore it from a backup or use a new --workdir") -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise WorkdirError(f"{path} does not exist") from None
    except OSError as e:
        raise _fail(path, "read", e, hint) from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise WorkdirError(f"{path} is damaged (not JSON: {e}); {hint}") from None


def append_jsonl(path: str, rows: Iterable[dict], fsync: bool = False) -> None:
    """Append rows; ``fsync`` before a checkpoint so no checkpoint is ever ahead of its rows."""
    rows = list(rows)
    if not rows and not fsync:
        return
    try:
        with open(path, "a") as f:
            for row in rows:
                f.write(json.dumps(_clean(row), sort_keys=True) + "\n")
            f.flush()
            if fsync:
                os.fsync(f.fileno())
    except OSError as e:
        raise _fail(path, "append to", e, "check the workdir's permissions and free space") from None


def read_jsonl(path: str) -> list[dict]:
    """All complete rows; a torn last line (killed mid-write) is ignored.

    A damaged line anywhere else is an error naming it: silently dropping it would also drop
    every row after it when a resume rewrites the file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise _fail(path, "read", e, "check that it is a readable file") from None
    lines = data.split(b"\n")
    lines.pop()  # b"" when the file ends with a newline; otherwise an unfinished write: ignored
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise WorkdirError(
                f"{path} line {i} is damaged (not a JSON object); fix or delete that line, "
                "then run again"
            )
        rows.append(row)
    return rows


def truncate_jsonl(path: str, max_step: int) -> None:
    """Keep rows with step <= max_step (and drop a torn tail): resume continues without duplicates."""
    if not os.path.lexists(path):
        return
    rows = read_jsonl(path)
    kept = [r for r in rows if r.get("step", 0) <= max_step]
    if len(kept) == len(rows) and _ends_cleanly(path):
        return  # nothing to drop: leave the file (and its mtime) alone
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            for row in kept:
                f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise _fail(path, "rewrite", e, "check the workdir's permissions and free space") from None


def _ends_cleanly(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


FILES = (CONFIG, METRICS, SPECTRA, SUMMARY)


def stale_temp_files(workdir: str) -> list[str]:
    """Temp files of our atomic writes (``<name>.tmp.<pid>``) that a kill left behind."""
    try:
        names = os.listdir(workdir)
    except OSError:
        return []
    return [n for n in names if any(n.startswith(f + ".tmp.") and n[len(f) + 5:].isdigit()
                                    for f in FILES)]


def remove_stale_temp_files(workdir: str) -> None:
    """Call only while holding the workdir lock: then no other writer can own them."""
    for name in stale_temp_files(workdir):
        _remove_quietly(os.path.join(workdir, name))


def check_utf8_path(flag: str, value: str) -> None:
    """Refuse a path that is not valid UTF-8 (named by its command-line ``flag``): TensorStore,
    which writes the checkpoints, cannot open it, and would fail long after the run started."""
    try:
        os.path.abspath(value).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(value).decode("utf-8", "backslashreplace")
        raise ConfigError(f"{flag} {shown}: the path is not valid UTF-8 and TensorStore (which "
                          "writes the checkpoints) cannot open it; use a UTF-8 name") from None


def path(workdir: str, name: str) -> str:
    return os.path.join(workdir, name)


def is_run(workdir: str) -> bool:
    return os.path.isfile(path(workdir, CONFIG))


def checkpoint_steps(directory: str) -> list[int]:
    """The steps with a checkpoint folder in ``directory`` (ascending; [] if there is none)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def update_json(path: str, update) -> Any:
    """Read-modify-write of a JSON file under a file lock (processes that share a workdir, such
    as a study's array tasks, each add their part); ``update(old or {})`` returns the new one."""
    from filelock import FileLock

    with FileLock(path + ".lock"):
        new = update(read_json(path) if os.path.exists(path) else {})
        write_json(path, new)
    return new

