"""The launch scripts in scripts/ parse, say how to use them, and name only real commands, flags
and config keys (checked against the CLI's parser and the config defaults; nothing is run); the
Slurm scripts' requeue logic is run against stub commands (requeue exactly on exit code 75)."""

import argparse
import os
import re
import signal
import subprocess
import time

import pytest

from rnn_spectra.cli import build_parser
from rnn_spectra.config import default_config, flat_keys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS_DIR = os.path.join(REPO, "scripts")
EXPECTED = {"train_single_gpu.sh", "train_multi_gpu.sh", "slurm_array.sbatch",
            "slurm_multinode.sbatch", "tpu_vm.sh", "reproduce_paper.sh"}
SCRIPTS = sorted(f for f in os.listdir(SCRIPTS_DIR) if f.endswith((".sh", ".sbatch")))

# `rnn-spectra SUB ...` or `"$RNN_SPECTRA" SUB ...` up to the end of the (joined) line or a shell
# operator; placeholders in upper case (--config.KEY=VALUE) are not keys.
INVOCATION = re.compile(r"""(?:rnn-spectra|\$\{?RNN_SPECTRA\}?"?)[ \t]+([a-z][a-z-]*)([^\n;&|)]*)""")
CONFIG_KEY = re.compile(r"--config\.([a-z_][a-z0-9_.]*[a-z0-9_])")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)(?![\w.])")


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def read(name: str) -> str:
    with open(os.path.join(SCRIPTS_DIR, name)) as f:
        return f.read()


def logical_lines(text: str) -> str:
    """Backslash-continued lines joined into one, as the shell reads them."""
    return re.sub(r"\\\n", " ", text)


def test_every_launch_script_is_there():
    assert EXPECTED <= set(SCRIPTS), sorted(EXPECTED - set(SCRIPTS))


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_parses_and_documents_its_usage(name):
    path = os.path.join(SCRIPTS_DIR, name)
    text = read(name)
    assert text.startswith("#!"), f"{name}: no shebang"
    assert os.access(path, os.X_OK), f"{name}: not executable"
    header = []
    for line in text.splitlines()[1:]:
        if not line.startswith("#"):
            break
        header.append(line)
    assert any("Usage:" in line for line in header), f"{name}: no 'Usage:' in the header comment"
    assert "set -euo pipefail" in text, name
    result = subprocess.run(["bash", "-n", path], check=False, capture_output=True, text=True)
    assert result.returncode == 0, f"{name}: bash -n: {result.stderr}"


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_names_real_commands_flags_and_config_keys(name):
    text = logical_lines(read(name))
    commands = subparsers(build_parser())
    valid_keys = set(flat_keys(default_config()))
    problems = []
    for sub, rest in INVOCATION.findall(text):
        if sub not in commands:
            problems.append(f"unknown command `rnn-spectra {sub}`")
            continue
        parser = commands[sub]
        nested = subparsers(parser)
        if nested:  # data download ...
            action = rest.split()[0] if rest.split() else ""
            if action not in nested:
                problems.append(f"unknown command `rnn-spectra {sub} {action}`")
                continue
            parser = nested[action]
        for flag in FLAG.findall(rest):
            if flag not in options(parser):
                problems.append(f"`rnn-spectra {sub}` has no option {flag}")
    for key in CONFIG_KEY.findall(text):
        if key not in valid_keys:
            problems.append(f"unknown config key --config.{key}")
    assert not problems, f"{name}: " + "; ".join(sorted(set(problems)))


# ----------------------------------------------------------------------------- requeue on exit 75
def _stubs(tmp_path, code: int, on_term: int | None = None):
    """A fake CLI that exits ``code`` (or, given ``on_term``, waits for SIGTERM and exits with
    it), srun that runs its command, and scontrol that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    if on_term is None:
        body = f'echo "$*" >> {calls}\nexit {code}\n'
    else:
        body = (f'echo "$*" >> {calls}\ntrap \'kill "$child"; exit {on_term}\' TERM\n'
                f'touch {tmp_path / "running"}\nsleep 30 & child=$!\nwait "$child"\n')
    stubs = {
        "rnn-spectra": body,
        "scontrol": f'echo "scontrol $*" >> {calls}\n',
        "srun": 'while [[ "$1" == --* ]]; do shift; done\nexec "$@"\n',
    }
    for name, text in stubs.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + text)
        path.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "RNN_SPECTRA": str(bin_dir / "rnn-spectra"), "SLURM_ARRAY_TASK_ID": "0",
           "SLURM_ARRAY_JOB_ID": "7", "SLURM_JOB_ID": "9", "CELLS": "lstm", "SEEDS": "0"}
    return env, calls


SCRIPT_ARGS = {"slurm_array.sbatch": ["configs/adding.py", "runs/x"],
               "slurm_multinode.sbatch": ["study", "cpu", "runs/s"],
               "slurm_study.sbatch": ["pilot", "cpu", "runs/s"]}
REQUEUE = {"slurm_array.sbatch": "scontrol requeue 7_0", "slurm_multinode.sbatch": "scontrol requeue 9",
           "slurm_study.sbatch": "scontrol requeue 7_0"}


@pytest.mark.parametrize("name", sorted(SCRIPT_ARGS))
@pytest.mark.parametrize("code", [0, 2, 74, 75])
def test_slurm_scripts_requeue_exactly_on_exit_75(tmp_path, name, code):
    """75 ("interrupted, resume me") requeues the job and ends the script with 0; any other
    exit code is the script's own, without a requeue (a study's report runs only after 0)."""
    env, calls = _stubs(tmp_path, code)
    proc = subprocess.run(["bash", os.path.join(SCRIPTS_DIR, name), *SCRIPT_ARGS[name]], check=False,
                          env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    log = calls.read_text().splitlines()
    assert proc.returncode == (0 if code == 75 else code), proc.stderr
    assert (REQUEUE[name] in log) == (code == 75), log
    if name == "slurm_multinode.sbatch":
        assert any(line.startswith("report --workdir runs/s") for line in log) == (code == 0), log


@pytest.mark.parametrize("name", sorted(SCRIPT_ARGS))
def test_slurm_scripts_pass_the_time_limit_term_on_and_requeue(tmp_path, name):
    """Slurm's SIGTERM before the time limit: passed to the run, which checkpoints and exits 75;
    the script waits for that exit and requeues."""
    env, calls = _stubs(tmp_path, 0, on_term=75)
    proc = subprocess.Popen(["bash", os.path.join(SCRIPTS_DIR, name), *SCRIPT_ARGS[name]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 30
    while not (tmp_path / "running").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert REQUEUE[name] in calls.read_text().splitlines()


def test_slurm_study_submits_one_array_per_phase_chained_with_afterok(tmp_path):
    """The submitter counts the phase's groups in `study --plan`, submits that array and a job
    that submits the next phase once it has finished; an empty phase is skipped."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    plan = "pilot (pilot): 3 members in 2 groups\n  --phase pilot --group 0: a\n  --phase pilot --group 1: b"
    for name, body in {"rnn-spectra": f'printf "{plan}\\n"\n',
                       "sbatch": f'echo "sbatch $*" >> {calls}\necho 41\n'}.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RNN_SPECTRA": str(bin_dir / "rnn-spectra")}
    script = os.path.join(SCRIPTS_DIR, "slurm_study.sh")
    proc = subprocess.run(["bash", script, "cpu", "runs/s", "--partition=p"], check=False, env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    array, chain = calls.read_text().splitlines()
    workdir = tmp_path / "runs" / "s"  # made absolute: a task started elsewhere (--chdir) finds it
    assert "--partition=p --array=0-1" in array and array.endswith(f"slurm_study.sbatch pilot cpu {workdir}")
    assert "--dependency=afterok:41" in chain and "PHASE=extend" in chain
    assert chain.endswith(f"--wrap={script} cpu {workdir} --partition=p ")
    calls.unlink()  # this plan has no extension or confirmation groups: straight to finish
    proc = subprocess.run(["bash", script, "cpu", "runs/s"], check=False, env={**env, "PHASE": "extend"},
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    finish = (f"sbatch --job-name=rnn-spectra-report --output=slurm-%j.out "
              f"{SCRIPTS_DIR}/slurm_study.sbatch finish cpu {workdir}")
    assert calls.read_text().splitlines() == [finish]
