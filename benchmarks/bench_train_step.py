"""Train-step speed and memory: ours vs PyTorch side by side, GFLOP/s vs matmul peak, remat memory
at T=10,000, vmapped-seeds (sweep) throughput against PyTorch's single-model throughput.

The step timed is the real one (``rnn_spectra.train.make_train_step``: adding-task batch drawn on
device, forward scan, MSE, grads, pre-clip norm, global-norm clip, Adam, divergence masking),
jitted and donated as in a run. The PyTorch peer trains the same shapes with the same optimizer
and clipping on a batch drawn from our task. Timings alternate ours/torch in rounds and report
medians, so the ratio survives a noisy, shared machine.

Device-aware: when JAX's default backend is the GPU, the PyTorch peer runs on CUDA (cuDNN's fused
RNN/LSTM/GRU kernels), memory is the device allocator's peak (``memory_stats``) instead of RSS, and
the sweep rows cover every cell at (64, 200, 128) for S = 1..256 models. Every timing row says in
its unit (and its ``device`` field) where that side ran.

    python -m benchmarks.run --only bench_train_step [--quick]
    python -m benchmarks.bench_train_step [--quick]      # this file alone, prints its rows
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from rnn_spectra import config as config_lib
from rnn_spectra.cells import get_cell_spec
from rnn_spectra.train import build, init_state, make_train_step

CELLS = ("relu_rnn", "tanh_rnn", "lstm", "gru")
GATED = ("lstm", "gru")
SHAPES = ((64, 200, 128), (16, 1000, 256))  # (B, T, H)
TARGET_RATIO = 0.7  # ours / torch on CPU
SWEEP_SHAPE = (64, 200, 128)


# ----------------------------------------------------------------------------- devices
def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def jax_device_label() -> str:
    dev = jax.devices()[0]
    return f"jax {dev.platform}" + ("" if dev.platform == "cpu" else f" {dev.device_kind}")


def torch_device() -> str:
    """Where the PyTorch peer runs: CUDA when JAX runs on the GPU and torch sees one, else CPU."""
    from benchmarks import torch_baselines

    return "cuda" if on_gpu() and torch_baselines.cuda_available() else "cpu"


def torch_device_label(device: str, threads: int | None = None) -> str:
    if device == "cuda":
        from benchmarks import torch_baselines

        info = torch_baselines.cudnn_info()
        return f"torch cuda {info['device']} cuDNN {info['cudnn']}" + (
            "" if info["cudnn_enabled"] else " (cuDNN disabled)")
    return f"torch cpu {threads} threads"


# ----------------------------------------------------------------------------- our step
def make_config(cell: str, batch: int, seq_len: int, hidden: int, *, remat: bool = False,
                unroll: int | None = None, overrides: dict | None = None):
    c = config_lib.default_config()
    c.task.name, c.task.seq_len = "adding", seq_len
    c.model.cell, c.model.hidden_size, c.model.remat = cell, hidden, remat
    if unroll is not None:
        c.model.unroll = unroll
    c.optim.name, c.optim.learning_rate = "adam", 1e-3
    c.optim.clip, c.optim.clip_value = "global_norm", 1.0
    c.train.batch_size, c.train.steps = batch, 10_000
    config_lib.apply_overrides(c, overrides or {})
    return c


def jax_step(cell, batch, seq_len, hidden, policy=True, **kw):
    """(jitted donated step, initial state, experiment) for one configuration; ``policy=False``
    gives the scan JAX's default residuals (the model before the pre-activation policy)."""
    exp = build(config_lib.resolve(make_config(cell, batch, seq_len, hidden, **kw)))
    if not policy:
        exp.model.residual_policy = None
    step = jax.jit(make_train_step(exp), donate_argnums=0)
    return step, init_state(exp, 0), exp


class JaxRunner:
    """Keeps the donated state between timed calls."""

    def __init__(self, cell, batch, seq_len, hidden, **kw):
        self.step, self.state, self.exp = jax_step(cell, batch, seq_len, hidden, **kw)
        self.threads = None

    def run(self, steps: int) -> None:
        state = self.state
        for _ in range(steps):
            state, metrics = self.step(state)
        jax.block_until_ready((state, metrics))
        self.state = state


def step_flops(cell: str, batch: int, seq_len: int, hidden: int, input_size: int = 2) -> float:
    """Matmul FLOPs of one train step: forward 2*B*(D+H)*G*H per time step, backward twice that.

    Element-wise work, the readout and the optimizer are left out (a few % at these sizes), so the
    achieved GFLOP/s is a slight under-estimate.
    """
    gates = len(get_cell_spec(cell).gates)
    forward = 2.0 * batch * (input_size + hidden) * gates * hidden * seq_len
    return 3.0 * forward


def time_rounds(runners: dict, steps: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each runner in every round, alternating runners every round."""
    for r in runners.values():  # compile / warm caches
        r.run(2)
    times = {k: [] for k in runners}
    for _ in range(rounds):
        for name, r in runners.items():
            t0 = time.perf_counter()
            r.run(steps)
            times[name].append((time.perf_counter() - t0) / steps)
    return times


# ----------------------------------------------------------------------------- benchmarks
def bench_vs_torch(quick: bool) -> list[dict]:
    from benchmarks import torch_baselines

    have_torch, why = torch_baselines.available()
    if not have_torch:
        print(f"   skipping PyTorch rows: {why}", file=sys.stderr)
    shapes = SHAPES[:1] if quick else SHAPES
    cores = os.cpu_count() or 1
    gpu = on_gpu()
    tdev = torch_device() if have_torch else "cpu"
    ours_dev = jax_device_label()
    if have_torch and tdev == "cuda":
        from benchmarks.torch_baselines import cudnn_info

        print(f"   torch on CUDA: {cudnn_info()}", file=sys.stderr)
    elif have_torch and gpu:
        print("   JAX runs on the GPU but torch sees no CUDA device: the torch peer runs on the CPU",
              file=sys.stderr)
    rows = []
    for batch, seq_len, hidden in shapes:
        shape = f"B{batch}_T{seq_len}_H{hidden}"
        if gpu:  # ms-scale steps: more per round so the sync at the end of a round is noise
            steps, rounds = ((5, 3) if quick else (20, 7)) if seq_len <= 200 else ((3, 3) if quick else (10, 5))
        else:
            steps, rounds = ((3, 3) if quick else (5, 7)) if seq_len <= 200 else ((1, 3) if quick else (2, 5))
        for cell in CELLS:
            ours = JaxRunner(cell, batch, seq_len, hidden)
            runners = {"ours": ours}
            if cell in GATED:  # the same model with JAX's default scan residuals: the change's effect
                runners["ours_default_residuals"] = JaxRunner(cell, batch, seq_len, hidden, policy=False)
            if have_torch:
                inputs, targets = ours.exp.task.batch(jax.random.PRNGKey(0), batch)
                args = (cell, hidden, np.asarray(inputs), np.asarray(targets))
                runners["torch"] = torch_baselines.TorchStep(*args, threads=cores, device=tdev)
                if tdev == "cpu" and cores > 1:  # on a loaded machine OpenMP's spinning can cripple the multi-thread run
                    runners["torch_1thread"] = torch_baselines.TorchStep(*args, threads=1)
            raw = time_rounds(runners, steps, rounds)
            t = {k: statistics.median(v) for k, v in raw.items()}
            spread = {k: (max(v) - min(v)) / statistics.median(v) for k, v in raw.items()}
            rows.append({"name": f"{cell}/{shape}/ours", "value": 1e3 * t["ours"],
                         "unit": f"ms/step [{ours_dev}]", "device": ours_dev,
                         "min": 1e3 * min(raw["ours"]), "spread": spread["ours"]})
            if "ours_default_residuals" in t:
                rows.append({"name": f"{cell}/{shape}/ours_default_residuals",
                             "value": 1e3 * t["ours_default_residuals"], "unit": f"ms/step [{ours_dev}]",
                             "device": ours_dev, "min": 1e3 * min(raw["ours_default_residuals"])})
            if have_torch:
                for name in [k for k in runners if k.startswith("torch")]:
                    dev = torch_device_label(runners[name].device, runners[name].threads)
                    rows.append({"name": f"{cell}/{shape}/{name}", "value": 1e3 * t[name],
                                 "unit": f"ms/step [{dev}]", "device": dev,
                                 "min": 1e3 * min(raw[name]), "spread": spread[name],
                                 "torch": why, "threads": runners[name].threads,
                                 **({"cudnn": torch_baselines.cudnn_info()} if runners[name].cuda else {})})
                ratio = t["ours"] / t["torch"]
                if tdev == "cuda":  # no target: cuDNN's fused kernels are the single-model bar
                    rows.append({"name": f"{cell}/{shape}/ratio", "value": ratio,
                                 "unit": f"ours/torch step time, medians [{ours_dev} vs "
                                         f"{torch_device_label(tdev)}]",
                                 "ratio_of_minima": min(raw["ours"]) / min(raw["torch"])})
                else:
                    rows.append({"name": f"{cell}/{shape}/ratio", "value": ratio,
                                 "unit": f"ours/torch({cores} threads), medians (target <= {TARGET_RATIO})",
                                 "ratio_of_minima": min(raw["ours"]) / min(raw["torch"]),
                                 "meets_target": ratio <= TARGET_RATIO})
                    best = min(t[k] for k in runners if k.startswith("torch"))
                    rows.append({"name": f"{cell}/{shape}/ratio_vs_best_torch", "value": t["ours"] / best,
                                 "unit": "ours/fastest torch thread setting, medians"})
            flops = step_flops(cell, batch, seq_len, hidden)
            rows.append({"name": f"{cell}/{shape}/gflops", "value": flops / t["ours"] / 1e9,
                         "unit": "GFLOP/s (matmul FLOPs, ours)"})
            print(f"   {cell:9s} {shape}: " + ", ".join(
                f"{k} {1e3 * t[k]:.2f} ms (spread {100 * spread[k]:.0f}%)" for k in t),
                file=sys.stderr, flush=True)
    return rows


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best-of GFLOP/s of one jitted (n, n) @ (n, n) float32 matmul on the default device."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n))
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    best = min(_timed(lambda: f(a, b).block_until_ready()) for _ in range(repeats))
    return 2.0 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_peak_fraction(rows: list[dict], quick: bool) -> list[dict]:
    # A GPU does a 2048^3 product in tens of microseconds, under the dispatch cost: time a bigger one.
    n = (4096 if quick else 8192) if on_gpu() else (1024 if quick else 2048)
    peak = matmul_peak(n)
    precision = getattr(jax.config, "jax_default_matmul_precision", None) or "default"
    out = [{"name": "matmul_peak", "value": peak, "device": jax_device_label(), "n": n,
            "unit": f"GFLOP/s (f32 {n}^2 matmul, jitted, {precision} precision) [{jax_device_label()}]"}]
    for r in rows:
        if r["name"].endswith("/gflops"):
            out.append({"name": r["name"].replace("/gflops", "/peak_fraction"),
                        "value": r["value"] / peak, "unit": "of measured matmul peak"})
    return out


def bench_memory(quick: bool) -> list[dict]:
    """Peak memory of one train step at T=10,000, with and without ``model.remat``, each in a
    fresh subprocess: peak RSS (VmHWM; getrusage where /proc is missing) on the CPU, the device
    allocator's peak (``memory_stats``) on an accelerator, and XLA's buffer assignment (temp
    bytes, exact and noise-free)."""
    cell, batch, hidden, seq_len = "lstm", 16, (64 if quick else 128), 10_000
    rows = []
    # remat off with JAX's default residuals (every gate activation), off with ours (the tagged
    # pre-activations, the default), and on (carries only).
    for label, remat, policy in (("off_jax_default_residuals", False, False), ("off", False, True),
                                 ("on", True, True)):
        cmd = [sys.executable, "-m", "benchmarks.bench_train_step", "--memory-child",
               json.dumps([cell, batch, seq_len, hidden, remat, policy])]
        env = {**os.environ, "PYTHONPATH": _repo_root() + os.pathsep + os.environ.get("PYTHONPATH", "")}
        if on_gpu():  # this process already holds JAX's preallocated share of the card
            env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=_repo_root(), env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child failed: {proc.stderr[-2000:]}")
        m = json.loads(proc.stdout.strip().splitlines()[-1])
        tag = f"{cell}/B{batch}_T{seq_len}_H{hidden}/remat={label}"
        dev = m.get("device", "jax cpu")
        if m.get("device_peak_mib") is not None:
            rows.append({"name": f"{tag}/device_peak", "value": m["device_peak_mib"], "device": dev,
                         "unit": f"MiB device memory peak of the child (memory_stats) [{dev}]"})
            rows.append({"name": f"{tag}/device_peak_step",
                         "value": m["device_peak_mib"] - m["device_in_use_before_mib"], "device": dev,
                         "unit": "MiB device peak over the bytes in use before the step (state)"})
        else:
            rows.append({"name": f"{tag}/maxrss", "value": m["maxrss_mib"],
                         "unit": "MiB peak RSS of the child (VmHWM)"})
            rows.append({"name": f"{tag}/maxrss_step", "value": m["maxrss_mib"] - m["maxrss_before_mib"],
                         "unit": "MiB peak RSS growth during the step (over compile+init)"})
        rows.append({"name": f"{tag}/xla_temp", "value": m["xla_temp_mib"],
                     "unit": "MiB XLA temp buffers (compiled.memory_analysis)"})
        rows.append({"name": f"{tag}/step_time", "value": 1e3 * m["step_s"], "unit": f"ms/step [{dev}]",
                     "device": dev})
    return rows


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_mib() -> float:
    """Peak resident set of this process image: VmHWM from /proc (Linux), else ru_maxrss.

    Not ru_maxrss on Linux: the kernel carries the parent's high-water mark across fork+exec, so
    a child of a big benchmark process would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def memory_child(spec: str) -> None:
    cell, batch, seq_len, hidden, remat, policy = json.loads(spec)
    step, state, _ = jax_step(cell, batch, seq_len, hidden, remat=remat, policy=policy)
    compiled = step.lower(state).compile()
    analysis = compiled.memory_analysis()
    dev = jax.devices()[0]
    stats = _device_memory_stats(dev)
    before = peak_rss_mib()
    t0 = time.perf_counter()
    state, metrics = compiled(state)
    jax.block_until_ready((state, metrics))
    step_s = time.perf_counter() - t0
    out = {"maxrss_mib": peak_rss_mib(), "maxrss_before_mib": before, "device": jax_device_label(),
           "xla_temp_mib": analysis.temp_size_in_bytes / 2**20, "step_s": step_s}
    after = _device_memory_stats(dev)
    if stats and after and "peak_bytes_in_use" in after:
        out["device_in_use_before_mib"] = stats["bytes_in_use"] / 2**20
        out["device_peak_mib"] = after["peak_bytes_in_use"] / 2**20
    print(json.dumps(out))


def _device_memory_stats(dev) -> dict | None:
    """The accelerator allocator's counters; None on the CPU (RSS measures it there)."""
    if dev.platform == "cpu":
        return None
    try:
        return dev.memory_stats()
    except Exception:  # a backend without allocator statistics
        return None


def bench_vmap_seeds(quick: bool) -> list[dict]:
    """Sweep throughput: models*steps/s of one jitted step vmapped over S seeds (one program, S
    models), beside PyTorch's single-model throughput (1 / its step time) on its device and the
    ratio per model. On the GPU every cell at (64, 200, 128) for S = 1, 4, 16, 64, 256 (256 while
    S=64 steps in under a quarter second); on the CPU the ReLU RNN as before."""
    from benchmarks import torch_baselines

    gpu = on_gpu()
    if gpu:
        cells, (batch, seq_len, hidden) = CELLS, SWEEP_SHAPE
        sizes = (1, 4, 16) if quick else (1, 4, 16, 64, 256)
    else:
        cells = ("relu_rnn",)
        batch, seq_len, hidden = (16, 100, 64) if quick else SWEEP_SHAPE
        sizes = (1, 4, 16) if quick else (1, 4, 16, 64)
    have_torch, why = torch_baselines.available()
    tdev = torch_device() if have_torch else None
    ours_dev = jax_device_label()
    shape = f"B{batch}_T{seq_len}_H{hidden}"
    rows = []
    for cell in cells:
        exp = build(config_lib.resolve(make_config(cell, batch, seq_len, hidden)))
        prefix = f"vmap_seeds/{cell}/{shape}"
        torch_rate = None
        if have_torch:
            inputs, targets = exp.task.batch(jax.random.PRNGKey(0), batch)
            args = (cell, hidden, np.asarray(inputs), np.asarray(targets))
            cores = os.cpu_count() or 1
            peers = {"torch": torch_baselines.TorchStep(*args, threads=cores, device=tdev)}
            if tdev == "cpu" and cores > 1:  # the faster thread setting, as ratio_vs_best_torch
                peers["torch_1thread"] = torch_baselines.TorchStep(*args, threads=1)
            steps, rounds = ((5, 3) if quick else (20, 5)) if tdev == "cuda" else ((2, 1) if quick else (5, 3))
            medians = {k: statistics.median(v) for k, v in time_rounds(peers, steps, rounds).items()}
            best = min(medians, key=medians.get)
            torch_s = medians[best]
            torch_rate = 1.0 / torch_s
            dev = torch_device_label(tdev, peers[best].threads)
            rows.append({"name": f"{prefix}/torch_single", "value": torch_rate, "device": dev,
                         "unit": f"models*steps/s, one model [{dev}]", "step_ms": 1e3 * torch_s})
            del peers
        vstep = jax.jit(jax.vmap(make_train_step(exp)), donate_argnums=0)
        base, last_step_s = None, 0.0
        for s in sizes:
            if gpu and s > 64 and last_step_s > 0.25:
                print(f"   {cell}: skipping S={s} (S={sizes[sizes.index(s) - 1]} took "
                      f"{1e3 * last_step_s:.0f} ms/step)", file=sys.stderr)
                break
            try:
                step_s = _time_vmapped(vstep, exp, s, quick, gpu)
            except Exception as e:  # out of device memory at the largest S: report, keep the rest
                if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                    raise
                print(f"   {cell}: S={s} does not fit: {str(e)[:200]}", file=sys.stderr)
                break
            last_step_s = step_s
            rate = s / step_s
            base = base or rate
            tag = f"{prefix}/S={s}"
            rows.append({"name": tag, "value": rate, "unit": f"models*steps/s [{ours_dev}]",
                         "device": ours_dev, "step_ms": 1e3 * step_s})
            rows.append({"name": f"{tag}/speedup", "value": rate / base, "unit": "x vs S=1 throughput"})
            if torch_rate:
                rows.append({"name": f"{tag}/per_model_vs_torch", "value": rate / torch_rate,
                             "unit": "ours models*steps/s / torch one-model steps/s (>1: beats it)",
                             "beats_torch": rate > torch_rate})
            print(f"   {cell:9s} S={s:<3d}: {1e3 * step_s:8.2f} ms/step, {rate:9.1f} models*steps/s"
                  + (f", {rate / torch_rate:.2f}x torch ({torch_rate:.1f}/s)" if torch_rate else ""),
                  file=sys.stderr, flush=True)
    return rows


def _time_vmapped(vstep, exp, s: int, quick: bool, gpu: bool) -> float:
    """Seconds per vmapped step at S models (median of rounds on the GPU, one run on the CPU)."""
    state = jax.vmap(lambda seed: init_state(exp, seed))(jnp.arange(s))
    state, m = vstep(state)  # compile
    jax.block_until_ready((state, m))
    if gpu:  # size the rounds from one timed step: ~0.2 s each, 3 rounds
        t0 = time.perf_counter()
        state, m = vstep(state)
        jax.block_until_ready((state, m))
        steps, rounds = min(200, max(3, int(0.2 / (time.perf_counter() - t0)))), 3
    else:
        steps, rounds = max(2, (8 if quick else 20) // s), 1
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = vstep(state)
        jax.block_until_ready((state, m))
        times.append((time.perf_counter() - t0) / steps)
    del state, m
    return statistics.median(times)


def run(quick: bool) -> list[dict]:
    rows = bench_vs_torch(quick)
    rows += bench_peak_fraction(rows, quick)
    rows += bench_memory(quick)
    rows += bench_vmap_seeds(quick)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=["torch", "memory", "vmap", "all"], default="all")
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child)
        return 0
    if args.part == "torch":
        rows = bench_vs_torch(args.quick)
    elif args.part == "memory":
        rows = bench_memory(args.quick)
    elif args.part == "vmap":
        rows = bench_vmap_seeds(args.quick)
    else:
        rows = run(args.quick)
    for r in rows:
        print(f"{r['name']:<45} {r['value']:10.4g}  {r['unit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
