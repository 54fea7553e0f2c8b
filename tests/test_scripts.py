"""The launch scripts in scripts/ parse, say how to use them, and name only real commands, flags
and config keys (checked against the CLI's parser and the config defaults; nothing is run)."""

import argparse
import os
import re
import subprocess

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
    result = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
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
