"""JAX's backend in this process: starting it, its persistent compilation cache, and the BLAS
threads behind XLA:CPU's LAPACK calls. Process-wide settings, set by the command line and the
training loop; nothing here changes a number.
"""

from __future__ import annotations

import contextlib
import os
import sys

import jax

from rnn_spectra.errors import ConfigError


def require_backend() -> None:
    """Start JAX's backend now, turning a platform this machine does not have
    (``JAX_PLATFORMS=cuda`` without a GPU: a bare AssertionError; ``gpu``: "backend 'rocm' not
    known") into one line that says which platforms this JAX has."""
    try:
        jax.devices()
    except Exception as e:  # noqa: BLE001 - JAX raises AssertionError, RuntimeError, ValueError
        asked = os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or ""
        try:
            from jax._src import xla_bridge

            known = sorted(xla_bridge._backend_factories)  # installed: cpu always, plugins
        except Exception:  # noqa: BLE001 - private API; the message does without it
            known = ["cpu"]
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"JAX cannot start platform {asked!r} (JAX_PLATFORMS) on this machine ({why}); "
            f"this JAX has {', '.join(known)}: set JAX_PLATFORMS to one this machine has (cpu "
            "always works) or unset it; a GPU needs the CUDA build of jax (README)") from None


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache, on by default for the command line.

    Research means the same shapes again and again (seeds, resumed runs, re-run studies): the
    train step, the evals and the spectral monitor (~3 s of compile on a 2-core CPU, most of its
    cost in a 1000-step run) then compile once per machine. ``RNN_SPECTRA_COMPILATION_CACHE``
    names the folder (default ``~/.cache/rnn_spectra/jax``) or ``off``; a
    ``JAX_COMPILATION_CACHE_DIR`` of the user's own is left alone. Capped at 2 GiB."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    where = os.environ.get("RNN_SPECTRA_COMPILATION_CACHE",
                           os.path.join(os.path.expanduser("~"), ".cache", "rnn_spectra", "jax"))
    if where.lower() in ("off", "0", "none", ""):
        return
    try:
        os.makedirs(where, exist_ok=True)
    except OSError as e:
        print(f"rnn-spectra: compilation cache {where} unusable ({e.strerror}); compiling without "
              "it (set RNN_SPECTRA_COMPILATION_CACHE to another folder, or off)", file=sys.stderr)
        return
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_compilation_cache_max_size", 2 << 30)


_BLAS = []  # the threadpoolctl controller, once it has seen a BLAS library


def _blas_controller():
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController  # installed with scikit-learn
        except ImportError:
            return None
        import scipy.linalg  # noqa: F401 - loads the BLAS/LAPACK that jaxlib's CPU LAPACK calls use
        controller = ThreadpoolController()
        if not controller.select(user_api="blas").lib_controllers:
            return None  # none loaded (yet): look again next time
        _BLAS.append(controller)
    return _BLAS[0]


def single_threaded_blas():
    """Context: every BLAS the process has loaded runs one thread meanwhile: the one behind
    XLA:CPU's LAPACK calls (SVD, QR) and numpy's.

    For the spectral monitor, a train step that makes LAPACK calls (``control.lapack_threads``)
    and the float64 numpy linear algebra of ``spectral.relu_enumeration`` (stacks of small
    eigen-decompositions and solves).
    The monitor's SVDs and QRs are small ((n, n), n ~ 100s) and called many times per
    measurement (one SVD per lag). OpenBLAS's own threads then fight XLA's thread pool (and any
    other load) and spin: on 2 busy cores one measurement took 1-29 s instead of ~0.1 s (each
    (4, 128, 128) SVD 380 ms instead of 12 ms). Same results, one thread; numpy elsewhere in
    the process is unaffected outside the context."""
    controller = _blas_controller()
    if controller is None:
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")
