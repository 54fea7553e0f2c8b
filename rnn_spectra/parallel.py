"""Devices and processes: a ``jax.sharding`` mesh for one run or one sweep, and multi-host start-up.

Two layouts, chosen by ``parallel.mode``:

* ``data`` (a single run's default when there is more than one device): the batch is sharded
  over a 1-D mesh axis ``"data"`` with ``NamedSharding``, params and optimizer state replicated.
  The batch is drawn inside the jitted step, so the constraint on it lets XLA's SPMD partitioner
  draw each device's rows there (threefry is partitionable) and insert the gradient all-reduce.
* ``sweep`` (a study's default): the leading member axis of a sweep's stacked state is sharded
  over ``"sweep"``; members never talk to each other, so there is no communication at all. A
  group whose size is not a multiple of the device count is padded with copies of its first
  member, which are computed and thrown away (``SweepGroup`` never writes or checkpoints them).

Both give the numbers of the one-device run up to float reassociation (tested with 4 forced CPU
devices). ``none`` keeps everything on the first device. Under several processes
(``jax.distributed``) every process runs the same program on its own devices, and only process 0
writes files (``is_writer``); arrays that live on other processes' devices come to the host
through ``to_host``.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rnn_spectra.config import ParallelConfig
from rnn_spectra.errors import ConfigError, UserError

DISTRIBUTED = ("auto", "on", "off")


# ----------------------------------------------------------------------------- layouts
@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a run's arrays live. ``mesh`` is None for one device (no sharding at all)."""

    mode: str  # "none" | "data" | "sweep"
    mesh: Mesh | None = None

    @property
    def size(self) -> int:
        return 1 if self.mesh is None else self.mesh.size

    @property
    def replicated(self) -> NamedSharding | None:
        return None if self.mesh is None else NamedSharding(self.mesh, P())

    @property
    def stacked(self) -> NamedSharding | None:
        """Sharding of a sweep's stacked arrays (leading member axis)."""
        if self.mesh is None:
            return None
        return NamedSharding(self.mesh, P("sweep") if self.mode == "sweep" else P())

    def shard_batch(self, tree):
        """Constrain a batch (leading batch axis; under vmap the member axis is added by JAX)
        to be split over the data axis. The identity outside data parallelism, or where a batch
        does not divide evenly (eval batches are then computed replicated)."""
        if self.mode != "data" or self.mesh is None:
            return tree
        sharding = NamedSharding(self.mesh, P("data"))

        def constrain(x):
            if x.ndim == 0 or x.shape[0] % self.size:
                return x
            return jax.lax.with_sharding_constraint(x, sharding)

        return jax.tree_util.tree_map(constrain, tree)

    def put(self, tree, sharding=None):
        """Host-identical values (every process computed the same tree) as global arrays."""
        sharding = sharding or self.replicated
        if sharding is None:
            return tree

        def place(x):
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

        return jax.tree_util.tree_map(place, tree)


def _devices(num_devices: int) -> list:
    devices = jax.devices()
    if num_devices > len(devices):
        raise ConfigError(f"parallel.num_devices={num_devices} but only {len(devices)} devices are "
                          f"visible ({devices[0].platform}); use 0 for all of them")
    return devices[:num_devices] if num_devices else devices


def run_layout(p: ParallelConfig, batch_size: int) -> Layout:
    """The layout of a single training run (``rnn-spectra train``)."""
    if p.mode == "sweep":
        raise ConfigError("parallel.mode=sweep shards the members of a study; a single run "
                          "takes auto, data or none")
    devices = _devices(p.num_devices) if p.mode != "none" else jax.devices()[:1]
    if len(devices) == 1:
        return Layout("none")
    if batch_size % len(devices):
        raise ConfigError(
            f"data parallelism splits train.batch_size={batch_size} over {len(devices)} devices, "
            f"which does not divide it; use a multiple of {len(devices)}, or set "
            "--config.parallel.num_devices (or parallel.mode=none)")
    return Layout("data", Mesh(np.asarray(devices), ("data",)))


def sweep_layout(p: ParallelConfig, batch_size: int) -> Layout:
    """The layout of a sweep group: member axis sharded unless the config asks for data."""
    if p.mode == "data":
        return run_layout(p, batch_size)
    devices = _devices(p.num_devices) if p.mode != "none" else jax.devices()[:1]
    if len(devices) == 1:
        return Layout("none")
    return Layout("sweep", Mesh(np.asarray(devices), ("sweep",)))


def padded_size(members: int, layout: Layout) -> int:
    """Members rounded up to a multiple of the devices on the sweep axis."""
    if layout.mode != "sweep":
        return members
    return -(-members // layout.size) * layout.size


# ----------------------------------------------------------------------------- processes
def is_writer() -> bool:
    """Only process 0 writes metrics, summaries, reports (checkpoints are written by all)."""
    return jax.process_index() == 0


def to_host(tree):
    """Numpy copies of (possibly sharded, possibly multi-process) arrays, whole on every process."""

    def fetch(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(jax.device_get(x))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree_util.tree_map(fetch, tree)


def agree(flag: bool) -> bool:
    """True on every process if it is true on any: a stop asked of one process (a signal, a
    checkpoint clock) must stop all of them at the same step, or they deadlock in a collective."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def _cluster_environment() -> str | None:
    """Which multi-process launcher set up this process, or None for a plain start."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    # A job step started by srun (SLURM_STEP_NODELIST, which JAX's detection reads) with several
    # tasks; not the batch script itself, which may sit in a multi-task allocation alone.
    if env.get("SLURM_STEP_NODELIST") and int(env.get("SLURM_STEP_NUM_TASKS") or 1) > 1:
        return "SLURM"
    if int(env.get("OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return "Open MPI"
    if "," in env.get("TPU_WORKER_HOSTNAMES", "") or "," in env.get("TPU_PROCESS_ADDRESSES", ""):
        return "TPU pod slice"
    return None


def initialize_distributed(mode: str = "auto", coordinator: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None) -> bool:
    """``jax.distributed.initialize`` for a multi-process launch; must run before any JAX work.

    ``auto``: when a coordinator is given (flags or ``JAX_COORDINATOR_ADDRESS``) or the process
    runs under SLURM / Open MPI with more than one task, or on a multi-host TPU slice (JAX reads
    those launchers' variables itself). ``on``: always (fails if nothing says how). ``off``: never.
    Returns whether it initialized.
    """
    if mode not in DISTRIBUTED:
        raise ConfigError(f"--distributed must be one of {', '.join(DISTRIBUTED)}, got {mode!r}")
    explicit = [coordinator, num_processes, process_id]
    if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
        raise ConfigError("--coordinator, --num-processes and --process-id go together: give all "
                          "three (or none, under SLURM / Open MPI / a TPU pod)")
    if mode == "off":
        if coordinator is not None:
            raise ConfigError("--coordinator was given with --distributed off")
        return False
    if coordinator is not None:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ConfigError(f"--process-id must be in [0, {num_processes}) and --num-processes "
                              f">= 1; got {process_id} of {num_processes}")
        if ":" not in coordinator:
            raise ConfigError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    elif mode == "auto" and _cluster_environment() is None:
        return False
    if jax.distributed.is_initialized():
        return True
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except (RuntimeError, ValueError) as e:
        where = coordinator or _cluster_environment() or "no cluster environment found"
        raise UserError(f"jax.distributed.initialize failed ({where}): "
                        f"{str(e).strip().splitlines()[0][:300]}") from None
    print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local "
          f"of {jax.device_count()} devices", file=sys.stderr, flush=True)
    return True
