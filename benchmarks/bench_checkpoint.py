"""Cost of periodic Orbax checkpoints in a real run: a save every 100 steps vs. no periodic save.

One real ``train_and_evaluate`` run (adding task, tanh RNN, B=64, T=200, H=128, Adam +
global-norm clipping) with ``checkpoint.every_steps=100`` and a train row every 50 steps. Its
50-step blocks alternate: (100, 150] holds the save at step 100 (the blocking copy and the
background write that follows it), (150, 200] holds none, and so on. Each save block is paired
with the plain block right after it, side by side in one process, so drifts in the load of a
shared machine cancel; one save's cost spread over its 100 steps is the overhead of saving every
100 steps over not saving. Times are the run's own ``wall_time`` stamps, so compilation and the
final save are outside them. Target: under 5% of training time on CPU.

    python -m benchmarks.run --only bench_checkpoint [--quick]
    python -m benchmarks.bench_checkpoint [--quick]      # this file alone, prints its rows
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile

from benchmarks import script_main
from rnn_spectra import config as config_lib
from rnn_spectra import workdir as wd
from rnn_spectra.loop import train_and_evaluate

SHAPE = (64, 200, 128)  # (B, T, H)
EVERY = 100  # steps between checkpoints in the measured variant
TARGET_PERCENT = 5.0


def make_config(steps: int):
    batch, seq_len, hidden = SHAPE
    c = config_lib.default_config()
    c.task.name, c.task.seq_len = "adding", seq_len
    c.model.cell, c.model.hidden_size = "tanh_rnn", hidden
    c.train.batch_size, c.train.steps = batch, steps
    c.train.log_every = EVERY // 2  # block boundaries; the same host syncs in every block
    c.train.eval_every = steps  # one cheap eval, at the end (outside the timed blocks)
    c.train.eval_batches, c.train.eval_batch_size = 1, batch
    c.train.progress = False
    c.spectral.every = 0  # its measurements would land in the save blocks (every 200 steps)
    c.checkpoint.every_steps = EVERY
    return c


def block_pairs(steps: int) -> tuple[list[tuple[float, float]], int]:
    """[(seconds of a 50-step block after a save, of the next block)], checkpoint bytes."""
    with tempfile.TemporaryDirectory(prefix="bench_ckpt_") as w:
        summary = train_and_evaluate(make_config(steps), w)
        assert summary["status"] == "completed", summary
        stamp = {r["step"]: r["wall_time"] for r in wd.read_jsonl(wd.path(w, wd.METRICS))
                 if r["split"] == "train"}
        size = sum(os.path.getsize(os.path.join(root, f))
                   for root, _, files in os.walk(wd.path(w, wd.CHECKPOINTS)) for f in files)
        size //= max(len(summary["checkpoint_steps"]), 1)
    half = EVERY // 2
    pairs = [(stamp[s + half] - stamp[s], stamp[s + 2 * half] - stamp[s + half])
             for s in range(EVERY, steps - EVERY + 1, EVERY)]  # s: a save step
    return pairs, size


def run(quick: bool) -> list[dict]:
    steps = 400 if quick else 2000
    pairs, size = block_pairs(steps)
    half = EVERY // 2
    # Per pair: the save's extra seconds, over the 100 steps (two plain blocks) it serves.
    overheads = [100.0 * (saved - plain) / (2 * plain) for saved, plain in pairs]
    overhead = statistics.median(overheads)
    t_plain = statistics.median(plain for _, plain in pairs) / half
    t_saved = statistics.median(saved for saved, _ in pairs) / half
    b, t, h = SHAPE
    shape = f"B={b},T={t},H={h}"
    return [
        {"name": f"step_time_no_save[{shape}]", "value": 1e3 * t_plain, "unit": "ms"},
        {"name": f"step_time_block_after_save[{shape}]", "value": 1e3 * t_saved, "unit": "ms"},
        {"name": f"save_cost[{shape}]", "value": 1e3 * (t_saved - t_plain) * half, "unit": "ms"},
        {"name": f"ckpt_overhead_every_{EVERY}[{shape}]", "value": overhead, "unit": "%",
         "target": f"< {TARGET_PERCENT}", "met": overhead < TARGET_PERCENT,
         "pair_overheads": [round(x, 2) for x in overheads], "steps": steps},
        {"name": f"checkpoint_size[{shape}]", "value": size / 2**20, "unit": "MiB"},
    ]


def main(argv=None) -> int:
    return script_main(run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
