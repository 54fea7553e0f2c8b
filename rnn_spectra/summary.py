"""summary.json: what one member's training came to, typed, and the one function that writes it.

A member ends ``completed``, ``diverged`` or ``interrupted`` (``Summary``), or ``failed`` on a
storage error (``Failure``: the error and the step a resume starts from). Either says where the
member's checkpoints are: ``checkpoint_steps`` (a single run's own workdir) or ``sweep`` (its
group's directory, relative to the workdir, and its index there).
"""

from __future__ import annotations

import dataclasses

from rnn_spectra import workdir as wd


@dataclasses.dataclass(frozen=True)
class Summary:
    """A member that trained: its status, its record's last good step, its final numbers."""

    status: str  # completed | diverged | interrupted
    steps_completed: int  # the last good step (before a divergence)
    target_steps: int
    diverged_step: int | None  # 1-based step whose loss or gradient was non-finite
    final_eval: dict  # validation metrics of the last good params
    best_eval_loss: float | None  # the lowest finite validation loss seen (None: none was)
    test: dict | None  # test-set metrics (a study's numbers); None: not asked for
    baseline: float
    solved: bool
    num_params: int
    wall_time_s: float
    checkpoints: dict  # {"checkpoint_steps": [...]} or {"sweep": {...}}
    device: str
    parallel: dict  # mode, devices, processes

    def to_json(self) -> dict:
        out = {"status": self.status, "steps_completed": self.steps_completed,
               "target_steps": self.target_steps, "diverged_step": self.diverged_step,
               "last_good_step": self.steps_completed, "final_eval": self.final_eval,
               "best_eval_loss": self.best_eval_loss}
        if self.test is not None:
            out["test"] = self.test
        out.update(baseline=self.baseline, solved=self.solved, num_params=self.num_params,
                   wall_time_s=self.wall_time_s)
        return {**out, **self.checkpoints, "device": self.device, "parallel": self.parallel}


@dataclasses.dataclass(frozen=True)
class Failure:
    """A member stopped by a storage error (a full disk); its checkpoints are left as they are."""

    error: str
    last_checkpoint_step: int | None  # where a resume starts (None: from step 0)
    target_steps: int
    checkpoints: dict
    status: str = "failed"

    def to_json(self) -> dict:
        return {"status": self.status, "error": self.error,
                "steps_completed": self.last_checkpoint_step or 0,
                "last_checkpoint_step": self.last_checkpoint_step,
                "target_steps": self.target_steps, **self.checkpoints}


def write(workdir: str, summary: Summary | Failure) -> dict:
    """WORKDIR/summary.json (atomically); returns what was written."""
    record = summary.to_json()
    wd.write_json(wd.path(workdir, wd.SUMMARY), record)
    return record


def summary_line(summary: dict) -> str:
    """One human line for the console."""
    ev = summary.get("final_eval") or {}
    parts = [f"status={summary['status']}", f"steps={summary.get('steps_completed')}"]
    if "loss" in ev:
        parts.append(f"eval_loss={ev['loss']:.4g} (baseline {summary['baseline']:.4g})")
    if summary.get("diverged_step") is not None:
        parts.append(f"diverged at step {summary['diverged_step']}")
    parts.append(f"wall={summary.get('wall_time_s', 0):.1f}s")
    return " ".join(parts)
