"""``rnn-spectra``: parse the command line, then call the library. No logic lives here.

Every failure is one line on stderr and an exit code (``errors.EXIT_CODES``): bad input
(UserError) 2, an I/O failure such as a full disk (StorageError) 74, interrupted -- resume by
running the same command (Interrupted, a finished-early ``train``) 75.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from rnn_spectra.errors import (
    INTERRUPTED,
    ConfigError,
    Interrupted,
    StorageError,
    UserError,
)
from rnn_spectra.signals import SetUpSignals
from rnn_spectra.workdir import check_utf8_path

EXAMPLE = ("rnn-spectra train --config configs/adding.py --workdir runs/x "
           "--config.model.cell=relu_rnn --config.train.steps=500")


def split_overrides(extra: list[str]) -> dict[str, str]:
    """``--config.a.b=v`` or ``--config.a.b v`` pairs -> {"a.b": "v"}; anything else is an error."""
    out, i = {}, 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--config."):
            raise ConfigError(f"unrecognised argument {arg!r}; overrides look like --config.train.steps=500")
        key, eq, value = arg[len("--config."):].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise ConfigError(f"{arg} needs a value, e.g. {arg}=VALUE")
            value, i = extra[i + 1], i + 1
        out[key] = value
        i += 1
    return out


def cmd_train(args, overrides) -> int:
    from rnn_spectra.config_files import load_run_config
    from rnn_spectra.loop import train_and_evaluate
    from rnn_spectra.summary import summary_line

    cfg = load_run_config(args.config, args.workdir, overrides)
    summary = train_and_evaluate(cfg, args.workdir)
    print(f"{args.workdir}: {summary_line(summary)}")
    return INTERRUPTED if summary["status"] == "interrupted" else 0  # 75: resume me


def cmd_study(args, overrides) -> int:
    from rnn_spectra.study.run import run_study, study_plan, train_one_group

    if args.plan:
        print(study_plan(args.preset, args.workdir, overrides=overrides, seed_offset=args.seed_offset))
        return 0
    if (args.phase is None) != (args.group is None):
        raise ConfigError("--phase and --group go together (one group of one phase; "
                          "`rnn-spectra study --plan` lists them)")
    if args.phase is not None:
        train_one_group(args.preset, args.workdir, args.phase, args.group, overrides=overrides,
                        seed_offset=args.seed_offset)
        print(f"{args.workdir}: phase {args.phase} group {args.group} done")
        return 0
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be a positive integer, got {args.workers}")
    record = run_study(args.preset, args.workdir, report=not args.no_report, overrides=overrides,
                       seed_offset=args.seed_offset, workers=args.workers)
    print(f"{args.workdir}: study {record['preset']} done in {record['wall_time_s']:.0f}s"
          + ("" if args.no_report else f"; report: {os.path.join(args.workdir, 'report.md')}"))
    return 0


def cmd_report(args, overrides) -> int:
    from rnn_spectra.study.claims import check_compatible, check_study
    from rnn_spectra.study.report import (
        check_publish_dir,
        publish,
        study_command,
        write_report,
    )
    from rnn_spectra.study.run import export_chosen_checkpoints

    if args.publish:
        check_publish_dir(args.publish)  # before the report is written
    if args.check_claims is not None:  # "" is a mistake, not "no check"
        reference = check_compatible(args.check_claims, args.workdir)  # before the report
    export_chosen_checkpoints(args.workdir)  # those already exported are skipped
    print(write_report(args.workdir))
    if args.publish:
        print(publish(args.workdir, args.publish, study_command(args.workdir)))
    if args.check_claims is not None:  # "" is a mistake, not "no check"
        text, flipped = check_study(args.check_claims, reference, args.workdir)
        print(text)
        return 1 if flipped else 0
    return 0


def cmd_analyze(args, overrides) -> int:
    from rnn_spectra.analyze import (
        FP_CANDIDATES,
        analyze_fixed_points,
        analyze_workdir,
        check_candidates,
        open_checkpoint,
    )

    if args.candidates is not None and not args.fixed_points:
        raise ConfigError("--candidates sets the fixed-point search; add --fixed-points")
    candidates = FP_CANDIDATES if args.candidates is None else args.candidates
    if args.fixed_points:  # before the checkpoint is restored
        check_candidates(candidates)
    opened = open_checkpoint(args.workdir, args.step, args.out)
    if args.fixed_points:  # only the fixed points: the spectra's files are left as they are
        check_candidates(candidates, opened[0].model)  # its memory, now that n is known
        fp = analyze_fixed_points(args.workdir, candidates=candidates, opened=opened)
        print(f"{args.workdir}: step {fp['step']} fixed points (input x = 0) -> {fp['npz']}")
        print(f"  {fp['figure']}")
        print(fp["summary"])
        return 0
    result = analyze_workdir(args.workdir, opened=opened)
    print(f"{args.workdir}: step {result['step']} analysed -> {result['npz']}")
    for path in result["figures"]:
        print(f"  {path}")
    return 0


def cmd_config(args, overrides) -> int:
    from rnn_spectra.config_lister import list_config

    print(list_config(args.config, args.prefix, overrides))
    return 0


def cmd_data(args, overrides) -> int:
    from rnn_spectra import datasets

    data_dir = args.data_dir or datasets.default_data_dir(args.dataset)
    for path in datasets.download_mnist(data_dir):
        print(f"{path}: ok (MD5 verified)")
    return 0


def add_distributed_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-process (jax.distributed; every process runs the same command)")
    g.add_argument("--distributed", default="auto", choices=["auto", "on", "off"],
                   help="auto: initialise when launched by SLURM / Open MPI with several tasks, on "
                        "a multi-host TPU slice, or with --coordinator (default auto)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (explicit launch)")
    g.add_argument("--num-processes", type=int, help="number of processes (with --coordinator)")
    g.add_argument("--process-id", type=int, help="this process's index (with --coordinator)")


class OneLineParser(argparse.ArgumentParser):
    """argparse's usage errors in one line (its default prints the usage block first), exit 2;
    ``--help`` still shows the usage. Subparsers inherit the class."""

    def error(self, message: str):
        say(f"{self.prog}: error: {message}; see {self.prog} --help")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="rnn-spectra",
        description="Train tanh/ReLU RNNs, LSTMs and GRUs on long-range tasks and measure why they "
                    "learn or fail.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one run into a workdir (resumes an existing one)",
                           epilog=f"example: {EXAMPLE}")
    train.add_argument("--config", help="config file with get_config() (omit to resume --workdir)")
    train.add_argument("--workdir", required=True, help="the run's directory")
    add_distributed_flags(train)
    train.set_defaults(func=cmd_train, takes_overrides=True)

    config = sub.add_parser("config", help="list every config key: its value, its check and its "
                            "meaning (the defaults, or --config FILE's values)",
                            epilog="example: rnn-spectra config --config configs/adding.py model.")
    config.add_argument("--config", help="config file with get_config() (default: the defaults)")
    config.add_argument("prefix", nargs="?", default="", metavar="KEY-PREFIX",
                        help="only the keys that start with this (e.g. model. or optim.clip)")
    config.set_defaults(func=cmd_config, takes_overrides=True)

    analyze = sub.add_parser("analyze", help="spectra (or, with --fixed-points, the fixed points) of "
                                             "one checkpoint of a run: .npz + PNG figures")
    analyze.add_argument("--workdir", required=True, help="the run's directory")
    analyze.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    analyze.add_argument("--out", default=None, help="output directory (default WORKDIR/analysis/step_N)")
    analyze.add_argument("--fixed-points", action="store_true",
                         help="instead of the spectra, find the fixed and slow points under the "
                              "constant input x = 0 (no input): writes only fixed_points_step<N>.npz "
                              "and fixed_points.png and prints a summary (the spectra's .npz and "
                              "five figures are not touched; run analyze without it for those)")
    analyze.add_argument("--candidates", type=int, default=None,
                         help="starting states of the fixed-point search (with --fixed-points; default 256)")
    analyze.set_defaults(func=cmd_analyze)

    from rnn_spectra.study.presets import PRESETS

    study = sub.add_parser("study", help="train every variant of the question as vmapped sweeps, "
                           "then write the report (re-run to resume)")
    study.add_argument("--preset", default="cpu",
                       help=f"grid to run: {', '.join(f'{k} ({p.description})' for k, p in PRESETS.items())}")
    study.add_argument("--workdir", required=True, help="the study's directory")
    study.add_argument("--no-report", action="store_true", help="train only")
    study.add_argument("--plan", action="store_true",
                       help="print the phases and their groups (units of work) and exit")
    study.add_argument("--phase", choices=["pilot", "extend", "confirm"],
                       help="with --group K: train only that group (a cluster array task)")
    study.add_argument("--group", type=int, metavar="K", help="the group's index in --plan")
    study.add_argument("--workers", type=int, default=None, metavar="N",
                       help="train each phase's groups in N local processes, one core each "
                            "(default: one per core this process may use; 1: in this process)")
    study.add_argument("--seed-offset", type=int, default=0, metavar="N",
                       help="add N to every seed (pilot and confirmation): the same study on a "
                            "disjoint set of seeds, to check its claims (also --config.study.seed_offset=N)")
    add_distributed_flags(study)
    study.set_defaults(func=cmd_study, takes_overrides=True)

    data = sub.add_parser("data", help="fetch a dataset's files (checksum-verified)")
    data_sub = data.add_subparsers(dest="action", required=True)
    download = data_sub.add_parser("download", help="download into --data-dir (the default "
                                   "task.data_dir: $RNN_SPECTRA_DATA/mnist or ~/.cache/rnn_spectra/mnist)")
    download.add_argument("dataset", choices=["mnist"])
    download.add_argument("--data-dir", default=None, help="folder to put the files in")
    download.set_defaults(func=cmd_data)

    report = sub.add_parser("report", help="(re)write report.md, results.json and figures/ of a study")
    report.add_argument("--workdir", required=True, help="a study directory")
    report.add_argument("--publish", metavar="DIR",
                        help="also copy the report and figures to DIR/results.md, DIR/figures/ (docs)")
    report.add_argument("--check-claims", metavar="REF",
                        help="say per claim of REF/claims.json (a published study, e.g. docs) "
                             "whether it HOLDS, FLIPS or is UNDECIDED on this study; exit 1 if any flips")
    report.set_defaults(func=cmd_report)
    return parser


# Commands that checkpoint and pick up where they stopped: their interruption is exit 75.
RESUMABLE_COMMANDS = ("train", "study")
# Path arguments TensorStore or the files' readers must open: they must be valid UTF-8.
PATH_ARGUMENTS = ("workdir", "out", "publish", "check_claims")


def say(line: str) -> None:
    """One line on stderr, whatever it holds (a path with a non-UTF-8 byte is shown escaped)."""
    enc = getattr(sys.stderr, "encoding", None) or "utf-8"
    print(line.encode(enc, "backslashreplace").decode(enc, "replace"), file=sys.stderr, flush=True)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Our warnings (a skipped damaged checkpoint) in one line, without the source line."""
    if category.__module__.startswith("rnn_spectra."):
        return f"rnn-spectra: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def main(argv: list[str] | None = None, *, compilation_cache: bool = False) -> int:
    command, previous_format = "?", warnings.formatwarning
    warnings.formatwarning = _format_warning
    with SetUpSignals():  # from the first line: a Ctrl-C while JAX imports is no traceback either
        try:
            parser = build_parser()
            args, extra = parser.parse_known_args(argv)
            command = args.command
            if compilation_cache:
                from rnn_spectra.backend import enable_compilation_cache

                enable_compilation_cache()
            return _dispatch(args, extra)
        except Interrupted as e:
            if not hasattr(e, "signum"):  # a study's group checkpointed and stopped
                say(f"rnn-spectra {command}: {e}")
                return e.exit_code
            if command not in RESUMABLE_COMMANDS:
                say(f"rnn-spectra {command}: {e}")
                return 128 + e.signum
            say(f"rnn-spectra {command}: {e} outside the training loop; nothing trained is "
                "lost: run the same command to resume")
            return e.exit_code
        finally:
            warnings.formatwarning = previous_format


def _dispatch(args, extra: list[str]) -> int:
    try:
        overrides = split_overrides(extra) if getattr(args, "takes_overrides", False) else {}
        if extra and not getattr(args, "takes_overrides", False):
            raise ConfigError(f"unrecognised arguments: {' '.join(extra)}")
        for flag in PATH_ARGUMENTS:
            if getattr(args, flag, None):
                check_utf8_path(f"--{flag.replace('_', '-')}", getattr(args, flag))
        if hasattr(args, "distributed"):  # before anything touches a JAX backend
            from rnn_spectra.parallel import initialize_distributed

            initialize_distributed(args.distributed, args.coordinator, args.num_processes,
                                   args.process_id)
        if args.command not in ("data", "config"):  # where the CLI first touches the backend
            from rnn_spectra.backend import require_backend

            require_backend()
        return args.func(args, overrides)
    except (UserError, StorageError) as e:  # exit 2: fix the command; 74: fix the disk
        say(f"rnn-spectra {args.command}: error: {e}")
        return e.exit_code
    except KeyboardInterrupt:  # only where SetUpSignals could not be installed
        say("interrupted")
        return 130


def entry() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main(compilation_cache=True))


if __name__ == "__main__":
    entry()
