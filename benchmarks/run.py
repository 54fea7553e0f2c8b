"""``make bench``: run every ``benchmarks/bench_*.py``, print one table, write the JSON.

Each module exposes ``run(quick: bool) -> list[dict]``; a row has at least ``benchmark``,
``name``, ``value`` and ``unit``. Targets are ratios measured side by side in one process,
because the machines are shared and noisy. Results go to
``benchmarks/results/<machine>-<date>.json``.

    python -m benchmarks.run [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pkgutil
import platform
import sys
import time

import jax

HERE = os.path.dirname(os.path.abspath(__file__))


def machine_name() -> str:
    dev = jax.devices()[0]
    kind = dev.device_kind.replace(" ", "_") if dev.platform != "cpu" else f"cpu{os.cpu_count()}"
    return f"{platform.node() or 'host'}-{kind}".replace("/", "_")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--only", nargs="*", help="benchmark module names, e.g. bench_jacobian")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    names = sorted(m.name for m in pkgutil.iter_modules([HERE]) if m.name.startswith("bench_"))
    if args.only:
        unknown = set(args.only) - set(names)
        if unknown:
            print(f"unknown benchmark(s) {sorted(unknown)}; valid: {names}", file=sys.stderr)
            return 2
        names = [n for n in names if n in args.only]
    load_before = os.getloadavg()  # a shared machine's timings mean little without it
    rows = []
    for name in names:
        t0 = time.perf_counter()
        print(f"== {name}", file=sys.stderr, flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        for row in module.run(quick=args.quick):
            rows.append({"benchmark": name, **row})
        print(f"   {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    today = datetime.date.today().isoformat()
    out = args.out or os.path.join(HERE, "results", f"{machine_name()}-{today}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    record = {
        "date": today,
        "machine": machine_name(),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "cpu_count": os.cpu_count(),
        "quick": args.quick,
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]},
        "rows": rows,
    }
    with open(out, "w") as f:
        json.dump(record, f, indent=2)
    width = max((len(r["name"]) for r in rows), default=10)
    print(f"{'benchmark':<22} {'name':<{width}} {'value':>12}  unit")
    for r in rows:
        v = r["value"]
        text = f"{v:12.4g}" if isinstance(v, (int, float)) else f"{str(v):>12}"
        print(f"{r['benchmark']:<22} {r['name']:<{width}} {text}  {r['unit']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
