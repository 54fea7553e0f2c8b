"""Thin wrapper over ``orbax.checkpoint.CheckpointManager`` (v0 API with ``args=``).

Kept in one place so a later move to Orbax's v1 API is local. A checkpoint holds the whole
training state pytree (params, optimizer state, step, PRNG key, divergence marker) plus a small
JSON ``meta`` item; the resolved config lives beside it in the workdir's config.json.

Damage is expected, not exceptional: a run may be killed at any moment. Orbax writes each step
into a temporary directory and renames it when complete, so a kill mid-save leaves only a
temporary directory (cleaned up on the next start); anything else that fails to read is skipped
with a ``CheckpointWarning`` naming it, and moved aside to ``<directory>.damaged/`` once an older
good checkpoint has been found (the resumed run will write those steps again).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import sys
import time
import warnings

import jax
import orbax.checkpoint as ocp

from rnn_spectra.errors import StorageError, WorkdirError

# Orbax's metrics side-file name inside a step directory (``<step>/metrics/metrics``).
_METRICS_FILE = os.path.join("metrics", "metrics")


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (damaged) or moved aside."""


_STORAGE_TEXT = re.compile(r"No space left on device|Disk quota exceeded|Input/output error|"
                           r"File too large")


def storage_failure(e: BaseException) -> str | None:
    """The reason ("No space left on device") if ``e`` or an exception it wraps is the disk's
    fault, else None. Orbax and TensorStore re-raise OSErrors as other types (ValueError with
    "[OS error 28: No space left on device]"), so the text is matched too."""
    from rnn_spectra.workdir import STORAGE_ERRNOS

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return e.strerror or os.strerror(e.errno)
        match = _STORAGE_TEXT.search(str(e))
        if match:
            return match.group(0)
        e = e.__cause__ or e.__context__
    return None


class _DropOrbaxNoise(logging.Filter):
    # Orbax warns on every save without metrics once best_fn is set; saves between evals are
    # expected to have none, so the message is noise on every periodic checkpoint. A save that
    # fails for lack of disk space is logged by Orbax with its traceback from three threads
    # (~500 lines); the Checkpointer raises it as one StorageError line instead. After such a
    # failure, the failed save's metadata thread is still waiting when the process exits, and
    # logs the executor's shutdown as another traceback.
    failed_save = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "did not provide metrics" in record.getMessage():
            return False
        e = record.exc_info[1] if record.exc_info else None
        if e is None:
            return True
        if storage_failure(e):
            return False
        return not (self.failed_save and _AFTER_SHUTDOWN.search(str(e)))


_AFTER_SHUTDOWN = re.compile(r"cannot schedule new futures after (interpreter )?shutdown")


_NOISE_FILTER = _DropOrbaxNoise()


class _QuietClosedEventLoop:
    """``sys.unraisablehook`` that drops the noise of a damaged checkpoint's abandoned reads ("Event
    loop is closed") and passes on everything else.

    When Orbax fails to read a damaged checkpoint (or to write one to a full disk), its asyncio
    loop is closed while TensorStore still holds reads (writes) of the other arrays; each one that
    completes later calls back into the closed loop and prints a traceback (~140 lines for one
    fallback), besides the one line (a CheckpointWarning, a StorageError) that says what
    happened."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, unraisable) -> None:
        e = unraisable.exc_value
        if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
            return
        # The same reads, abandoned: their coroutines raise when they are garbage-collected.
        code = getattr(getattr(unraisable, "object", None), "cr_code", None)
        if getattr(code, "co_name", "") == "_read_array_index_and_device_put":
            return
        self.previous(unraisable)


def _silence_closed_event_loop() -> None:
    if not isinstance(sys.unraisablehook, _QuietClosedEventLoop):
        sys.unraisablehook = _QuietClosedEventLoop(sys.unraisablehook)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def _is_shape_mismatch(e: BaseException) -> bool:
    # Orbax's messages when the stored tree does not fit the template: a model of another shape
    # or another cell, not a damaged file. Matched on text (Orbax has no dedicated exception
    # types for these); anything unmatched is treated as damage, which still ends in an error
    # if no checkpoint fits.
    text = str(e)
    return isinstance(e, ValueError) and (
        "not compatible with the stored shape" in text or "Structure mismatch" in text
        or "tree structures do not match" in text or "does not match the stored dtype" in text
    )


class Checkpointer:
    """Periodic (steps and/or minutes) async saves; keeps the last ``keep`` plus the best eval."""

    def __init__(self, directory: str, *, every_steps: int = 0, every_minutes: float = 0.0,
                 keep: int = 3, best_metric: str = "eval_loss"):
        self.directory = os.path.abspath(directory)
        self.damaged_directory = self.directory + ".damaged"
        self.every_steps = every_steps
        self.every_minutes = every_minutes
        self._last_save_time = time.monotonic()
        self._last_saved_step: int | None = None
        self._pending_step: int | None = None  # an async save not yet known to have succeeded
        self._failed = False  # a save failed and was raised: close() must not raise it again
        if os.path.lexists(self.directory) and not os.path.isdir(self.directory):
            raise WorkdirError(
                f"{self.directory} exists but is not a directory; move it away (checkpoints are "
                "written there) and run again"
            )
        self._quarantine_unreadable_metrics()
        metric = lambda m: m[best_metric]  # noqa: E731
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(keep),
            # reverse=True sorts descending and BestN keeps the tail: the lowest eval loss.
            ocp.checkpoint_managers.BestN(get_metric_fn=metric, reverse=True, n=1,
                                          keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            # best_fn only makes Orbax write the metrics to disk; without it a restarted manager
            # sees no metrics and the best checkpoint is deleted by the first save after resume.
            best_fn=metric,
            best_mode="min",
            create=True,
            cleanup_tmp_directories=True,  # saves cut short by a kill
            enable_async_checkpointing=True,
        )
        logging.getLogger("absl").addFilter(_NOISE_FILTER)
        logging.getLogger("asyncio").addFilter(_NOISE_FILTER)  # "Task exception was never retrieved"
        # Before any read or write: a failing one's stray callbacks start at once.
        _silence_closed_event_loop()
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as e:
            from rnn_spectra.workdir import io_error

            raise io_error(self.directory, "use checkpoint directory", e,
                           "check its permissions") from None

    # ------------------------------------------------------------------ saving
    def due(self, step: int) -> bool:
        """Whether the periodic policy asks for a save after ``step`` completed steps."""
        if self.every_steps and step % self.every_steps == 0:
            return True
        if self.every_minutes and time.monotonic() - self._last_save_time >= 60 * self.every_minutes:
            return True
        return False

    def save(self, step: int, state, meta: dict, metrics: dict | None = None) -> bool:
        """Asynchronous save; returns once the arrays are copied off the device buffers.

        ``metrics`` (e.g. ``{"eval_loss": x}``) ranks the checkpoint for keep-best; pass it only
        at steps that were evaluated. Returns False if ``step`` is already saved.
        """
        if step == self._last_saved_step or step in self.manager.all_steps():
            return False
        self.wait()  # the previous save's error (a full disk) surfaces here, naming its step
        if metrics is not None and not all(math.isfinite(v) for v in metrics.values()):
            metrics = None  # a non-finite eval cannot be "best"; JSON cannot hold it either
        self._pending_step = step
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                metrics=metrics,
                force=True,
            )
        except Exception as e:  # noqa: BLE001 - a full disk becomes one line; anything else re-raised
            self._raise_if_storage(e)
            raise
        self._last_saved_step = step
        self._last_save_time = time.monotonic()
        return True

    def poll(self) -> None:
        """Raise a finished background save's failure now (StorageError), not at the next save:
        a run on a full disk stops within a step of the failed save. Cheap (reads a flag)."""
        if self._pending_step is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def _raise_if_storage(self, e: BaseException) -> None:
        reason = storage_failure(e)
        if reason is None:
            return
        step, self._pending_step, self._failed = self._pending_step, None, True
        _NOISE_FILTER.failed_save = True
        from rnn_spectra.workdir import free_space

        kept = self.good_steps()
        raise StorageError(
            f"cannot save checkpoint step {step} to {self.directory}: {reason} "
            f"({free_space(self.directory)} on that file system); "
            + (f"the checkpoints before it are kept (latest: step {kept[-1]}): " if kept else "")
            + "free some space, then run the same command to resume"
        ) from None

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def good_steps(self) -> list[int]:
        """The steps on disk that were saved completely (re-read from the directory: after a
        failed save Orbax's own list may be missing steps that are still there)."""
        try:
            self.manager.reload()
            return self.steps()
        except Exception:  # noqa: BLE001 - only used to word an error
            return []

    # ------------------------------------------------------------------ restoring
    def restore(self, template, step: int | None = None):
        """Restore (state, meta) at ``step``, or at the latest readable step if None.

        A damaged checkpoint (truncated file, half-written directory) is skipped with a warning
        naming it, and the one before it is tried; damaged ones newer than the restored step are
        moved aside. A checkpoint whose arrays do not fit ``template`` (another model shape) is a
        WorkdirError at once, and so is finding no readable checkpoint; then nothing is moved.
        """
        steps = self.steps()
        if not steps:
            raise WorkdirError(f"no checkpoints in {self.directory}")
        if step is not None and step not in steps:
            raise WorkdirError(f"no checkpoint at step {step} in {self.directory}; available: {steps}")
        candidates = [step] if step is not None else steps[::-1]
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
        damaged = []
        for s in candidates:
            where = os.path.join(self.directory, str(s))
            try:
                restored = self.manager.restore(
                    s,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                    ),
                )
            except Exception as e:  # orbax raises many types for damaged files; classify, skip
                if _is_shape_mismatch(e):
                    raise WorkdirError(
                        f"checkpoint {where} does not fit this model ({_first_line(e)}); it was "
                        "written with another config or another version of rnn_spectra: resume "
                        "with those, or use a new --workdir"
                    ) from None
                warnings.warn(f"skipping damaged checkpoint {where}: {_first_line(e)}",
                              CheckpointWarning, stacklevel=2)
                damaged.append(s)
                continue
            if not isinstance(restored.meta, dict):
                warnings.warn(f"skipping damaged checkpoint {where}: meta is not a JSON object",
                              CheckpointWarning, stacklevel=2)
                damaged.append(s)
                continue
            for d in damaged:  # newer than s: the resumed run writes these steps again
                self._move_aside(d)
            if damaged:
                self.manager.reload()
            return restored.state, restored.meta
        raise WorkdirError(
            f"no readable checkpoint in {self.directory} (tried steps {candidates}, all damaged); "
            f"move the directory away to restart the run from step 0, or use a new --workdir"
        )

    def _move_aside(self, step: int, part: str = "") -> None:
        """Move step directory ``step`` (or its sub-directory ``part``) to the damaged folder."""
        if jax.process_index() != 0:  # one mover on a shared file system
            return
        src = os.path.join(self.directory, str(step), part).rstrip(os.sep)
        name = f"{step}.{part}" if part else str(step)
        os.makedirs(self.damaged_directory, exist_ok=True)
        dst, n = os.path.join(self.damaged_directory, name), 1
        while os.path.lexists(dst):
            dst, n = os.path.join(self.damaged_directory, f"{name}.{n}"), n + 1
        shutil.move(src, dst)
        warnings.warn(f"moved damaged {src} to {dst}", CheckpointWarning, stacklevel=3)

    def _quarantine_unreadable_metrics(self) -> None:
        # Orbax reads every step's metrics file while constructing the manager and lets a JSON
        # error escape, so one torn metrics file would make every checkpoint unreachable. The
        # arrays may still be good: move only the metrics aside (the step loses its keep-best
        # ranking); the restore itself checks the rest.
        if not os.path.isdir(self.directory):
            return
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name, _METRICS_FILE)
            if not name.isdigit() or not os.path.exists(path):
                continue
            try:
                with open(path, "rb") as f:
                    json.loads(f.read())
            except (OSError, ValueError) as e:
                warnings.warn(f"damaged checkpoint metrics {path}: {_first_line(e)}",
                              CheckpointWarning, stacklevel=3)
                self._move_aside(int(name), os.path.dirname(_METRICS_FILE))

    # ------------------------------------------------------------------ shutdown
    def wait(self) -> None:
        """Block until the last save is on disk; its failure (a full disk) is a StorageError."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - a full disk becomes one line; anything else re-raised
            self._raise_if_storage(e)
            raise
        self._pending_step = None

    def close(self) -> None:
        try:
            if not self._failed:
                self.wait()
        finally:
            try:
                self.manager.close()
            except Exception:  # noqa: BLE001 - after a failed save the failure was raised already
                if not self._failed:
                    raise
