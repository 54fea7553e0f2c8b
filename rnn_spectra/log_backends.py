"""The views of a run's rows that its ``log`` section turns on (TensorBoard, W&B): ``require``
checks, before anything is written, that their packages import (one line naming the extra);
``open_loggers`` gives the loop one ``run_logs.Fanout`` per member over them. Each backend is
imported only when it is on: both are optional extras.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from rnn_spectra.run_logs import Fanout, RowLogger


def require(log) -> None:
    """One-line ConfigError when a backend the ``log`` section turns on cannot be imported."""
    if log.tensorboard:
        from rnn_spectra.tensorboard import require_tensorboardx

        require_tensorboardx()
    if log.wandb:
        from rnn_spectra.wandb_log import require_wandb

        require_wandb()


def open_loggers(run, config: Mapping, workdir: str, *, start_step: int,
                 group: str | None = None) -> Fanout | None:
    """A member's loggers for the backends ``run.log`` turns on, or None when it turns on none.
    ``config``: the member's config as given (config.json), W&B's run config; ``group``: the
    sweep group the member trains in (W&B groups its runs by it; the run is named after the
    workdir's last folder, or last two in a group)."""
    loggers: list[RowLogger] = []
    try:
        if run.log.tensorboard:
            from rnn_spectra.tensorboard import TensorBoardLogger, hparams_of

            loggers.append(TensorBoardLogger(workdir, start_step=start_step, hparams=hparams_of(run)))
        if run.log.wandb:
            from rnn_spectra.wandb_log import WandbLogger

            # a group's members: their row and setting (a study's workdirs end .../<row>/<setting>)
            parts = os.path.normpath(workdir).split(os.sep)
            loggers.append(WandbLogger(workdir, run.log, config, group=group,
                                       name="/".join(parts[-2:] if group else parts[-1:])))
    except BaseException:
        Fanout(loggers).close()
        raise
    return Fanout(loggers) if loggers else None
