"""Will a config fit? A rough, deliberately simple estimate, checked before anything is written.

``model.hidden_size=1000000`` used to end in a RESOURCE_EXHAUSTED traceback after config.json
was written (so the workdir could not be reused with another size). ``check_fits`` refuses such
a config with one line (exit 2) before the workdir is touched, saying how much it would need and
how much there is. The estimate errs on the large side but counts only what a train step surely
holds, so a config that fits is never refused:

* the training state (params + optimizer state, exact: ``jax.eval_shape`` of ``init_state``),
  plus the gradients and the updates (twice the params);
* the activations the backward pass keeps: T x B x (G + 2) x H floats, G the cell's gate
  blocks (the tagged pre-activations) plus the carry; or, if larger, the eval's T x B_eval x H.

It is compared with what the device has free: an accelerator's ``memory_stats()`` (bytes_limit
- bytes_in_use), or the host's MemAvailable for CPU devices (all of which share the host's
memory). Where neither is known the check passes.
"""

from __future__ import annotations

import os

import jax

from rnn_spectra.errors import ConfigError

FLOAT_BYTES = 4


def _nbytes(tree) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def estimate(exp) -> dict:
    """Bytes one member of ``exp`` (a ``train.Experiment``) needs: state, activations, total."""
    from rnn_spectra.cells import get_cell_spec
    from rnn_spectra.train import init_state

    shapes = jax.eval_shape(lambda: init_state(exp, 0))  # abstract: nothing is allocated
    params = _nbytes(shapes["params"])
    state = _nbytes(shapes) + 2 * params  # + gradients and updates
    run, T = exp.run, exp.task.length
    H, G = run.model.hidden_size, len(get_cell_spec(run.model.cell).gates)
    train = T * run.train.batch_size * (G + 2) * H * FLOAT_BYTES
    evals = T * run.train.eval_batch_size * H * FLOAT_BYTES
    return {"state": state, "activations": max(train, evals), "total": state + max(train, evals),
            "shape": f"T={T} x B={run.train.batch_size} x {G + 2}H={(G + 2) * H}"}


def available(device=None) -> tuple[int | None, str]:
    """(bytes free, where) on ``device`` (default: the first); None where unknown."""
    device = device or jax.local_devices()[0]
    if device.platform != "cpu":
        try:
            stats = device.memory_stats() or {}
        except Exception:  # noqa: BLE001 - not every backend reports it
            stats = {}
        if "bytes_limit" in stats:
            return stats["bytes_limit"] - stats.get("bytes_in_use", 0), f"{device.device_kind} memory free"
        return None, device.device_kind
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "host memory available (MemAvailable)"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "host memory free"
    except (ValueError, OSError, AttributeError):
        return None, "host"


def check_fits(exp, members: int = 1, layout=None, what: str = "this config") -> dict:
    """Refuse (ConfigError, before anything is written) a config whose estimate exceeds the
    memory free on its device. ``members`` trained stacked (a sweep group) under ``layout``:
    sharded over the devices in ``sweep`` mode, the batch split over them in ``data`` mode."""
    from rnn_spectra.workdir import human_bytes

    one = estimate(exp)
    size = layout.size if layout is not None else 1
    mode = layout.mode if layout is not None else "none"
    device = jax.local_devices()[0]
    if device.platform == "cpu" or size == 1:  # CPU devices share the host's memory
        need = members * one["total"]
    elif mode == "sweep":
        need = -(-members // size) * one["total"]
    else:  # data: state replicated on every device, activations split
        need = members * (one["state"] + one["activations"] // size)
    free, where = available(device)
    if free is not None and need > free:
        per = f"{members} members x " if members > 1 else ""
        raise ConfigError(
            f"{what} needs about {human_bytes(need)} ({per}params + optimizer state "
            f"{human_bytes(one['state'])}, activations {one['shape']} floats "
            f"{human_bytes(one['activations'])}) but there is {human_bytes(free)} {where}; "
            "lower model.hidden_size, train.batch_size or task.seq_len")
    return {**one, "need": need, "free": free}
