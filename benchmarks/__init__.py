"""The benchmarks: each ``bench_*.py`` has ``run(quick) -> rows``; ``run.py`` runs them all."""

import argparse
import json


def script_main(run, doc: str, argv=None) -> int:
    """``python -m benchmarks.bench_X [--quick]``: print the benchmark's rows as JSON lines."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    for row in run(args.quick):
        print(json.dumps(row))
    return 0
