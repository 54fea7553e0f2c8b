"""Thin wrapper over ``orbax.checkpoint.CheckpointManager`` (v0 API with ``args=``).

Kept in one place so a later move to Orbax's v1 API is local. A checkpoint holds the whole
training state pytree (params, optimizer state, step, PRNG key, divergence marker) plus a small
JSON ``meta`` item; the resolved config lives beside it in the workdir's config.json.
"""

from __future__ import annotations

import logging
import os
import time
import warnings

import jax
import orbax.checkpoint as ocp

from rnn_spectra.errors import WorkdirError

log = logging.getLogger(__name__)


class Checkpointer:
    """Periodic (steps and/or minutes) async saves; keeps the last ``keep`` plus the best eval."""

    def __init__(self, directory: str, *, every_steps: int = 0, every_minutes: float = 0.0,
                 keep: int = 3, best_metric: str = "eval_loss"):
        self.directory = os.path.abspath(directory)
        self.every_steps = every_steps
        self.every_minutes = every_minutes
        self._last_save_time = time.monotonic()
        self._last_saved_step: int | None = None
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(keep),
            ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m[best_metric], reverse=True, n=1,
                keep_checkpoints_without_metrics=False,
            ),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            create=True,
            enable_async_checkpointing=True,
        )
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        except PermissionError as e:
            raise WorkdirError(f"cannot write checkpoints to {self.directory}: {e.strerror}") from None

    def due(self, step: int) -> bool:
        """Whether the periodic policy asks for a save after ``step`` completed steps."""
        if self.every_steps and step % self.every_steps == 0:
            return True
        if self.every_minutes and time.monotonic() - self._last_save_time >= 60 * self.every_minutes:
            return True
        return False

    def save(self, step: int, state, meta: dict, metrics: dict | None = None) -> None:
        """Asynchronous save; returns once the device arrays are copied out."""
        if step == self._last_saved_step or step in self.manager.all_steps():
            return
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            metrics=metrics,
            force=True,
        )
        self._last_saved_step = step
        self._last_save_time = time.monotonic()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, template, step: int | None = None):
        """Restore (state, meta) at ``step``, or at the latest readable step if None.

        A damaged checkpoint (truncated file, half-written directory) is skipped with a warning
        naming it, and the one before it is tried; if none is readable, a WorkdirError.
        """
        steps = self.steps()
        if step is not None:
            if step not in steps:
                raise WorkdirError(
                    f"no checkpoint at step {step} in {self.directory}; available: {steps or 'none'}"
                )
            candidates = [step]
        else:
            candidates = steps[::-1]
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
        for s in candidates:
            try:
                restored = self.manager.restore(
                    s,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                    ),
                )
                return restored.state, restored.meta
            except Exception as e:  # orbax raises many types for damaged files; skip and say which
                warnings.warn(
                    f"skipping damaged checkpoint {os.path.join(self.directory, str(s))}: "
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                    stacklevel=2,
                )
        if not candidates:
            raise WorkdirError(f"no checkpoints in {self.directory}")
        raise WorkdirError(f"no readable checkpoint in {self.directory} (tried steps {candidates})")

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
