"""The study's Slurm path under a real Slurm: scripts/slurm_study.sh on the smoke preset in a
private single-node cluster (tests/slurm_cluster.py), one pilot task stopped the way a time
limit stops it (requeued, resumed); the study it finishes has the numbers of a plain local
`rnn-spectra study`, and submitting it again skips every group.

Slow (`make test-all`, or `pytest -m slow tests/test_slurm_study.py`; about 8 min on a loaded 2-core machine); needs
root and `apt-get install -y slurm-wlm munge`, else it skips with the reason.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import ClusterUnavailable, SlurmCluster, missing_requirement

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "scripts" / "slurm_study.sh"
sys.path.insert(0, str(REPO / "scripts"))
from same_numbers import CLOCKS  # the record's fields that are clocks

# how the run was split (a local run's worker processes, the report job's one; the groups the
# report job found trained by the array tasks), not a number
HOW_RUN = CLOCKS | {"workers", "groups_found_done"}
STUDY_TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = missing_requirement()
    if reason:
        pytest.skip(f"no private Slurm cluster: {reason}")
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except ClusterUnavailable as e:
        c.stop()
        pytest.skip(f"no private Slurm cluster: {e}")
    try:
        yield c
    finally:
        c.stop()


def _cli_env(base: dict) -> dict:
    """The tree under test, whichever rnn_spectra the venv's console script was installed from."""
    cli = Path(sys.executable).parent / "rnn-spectra"
    env = {**base, "RNN_SPECTRA": str(cli) if cli.exists() else shutil.which("rnn-spectra") or "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))}
    if not env["RNN_SPECTRA"]:
        pytest.skip("no rnn-spectra console script beside this python (pip install -e .)")
    return env


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in HOW_RUN}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _report_numbers(text: str) -> list[str]:
    """The report without its clocks: the Machine line (dates, wall time, throughput) and the
    tables' one-model step times and seconds-to-target columns."""
    out, clock_cols = [], []
    for line in text.splitlines():
        if line.startswith("Machine:"):
            continue
        if line.startswith("|"):
            cells = line.split("|")
            if not clock_cols and not set(line) <= set("|-: "):  # a header
                clock_cols = [i for i, c in enumerate(cells)
                              if any(k in c for k in ("ms / step", "seconds", "s for the budget"))]
            line = "|".join(c for i, c in enumerate(cells) if i not in clock_cols)
        else:
            clock_cols = []
        out.append(line)
    return out


def _submit(cluster, env, cwd: Path, workdir: Path) -> str:
    cwd.mkdir()
    proc = subprocess.run(["bash", str(LAUNCHER), "smoke", str(workdir)], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"pilot: \d+ groups in array job (\d+)", proc.stdout)
    assert m, proc.stdout
    return m.group(1)


def _wait_for(predicate, what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.2)


def _logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                     for p in sorted(folder.glob("slurm-*.out")))


def _wait_all_ok(cluster, logs: Path) -> None:
    try:
        cluster.wait_empty(STUDY_TIMEOUT_S)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{_logs(logs)}") from None
    exits = cluster.job_exits()
    assert all(v == "COMPLETED 0:0" for v in exits.values()), f"{exits}\n{_logs(logs)}"


def test_study_under_slurm_equals_a_local_run_and_resubmits_idempotently(cluster, tmp_path):
    env = _cli_env(cluster.env)
    workdir = tmp_path / "study"
    t0 = time.monotonic()
    first = tmp_path / "submit"
    pilot = _submit(cluster, env, first, workdir)

    # pilot task 0, training: SIGTERM to its batch shell as before a time limit (--signal=B:TERM)
    log0 = first / f"slurm-{pilot}_0.out"
    _wait_for(lambda: log0.exists() and "step 5/" in log0.read_text(errors="replace"),
              "training step in task 0's log")
    try:  # Slurm 22.05's scancel delivers it, then may retry on "Job can not be altered now"
        cluster.run(["scancel", "--batch", "--signal=TERM", f"{pilot}_0"], timeout=4)
    except subprocess.TimeoutExpired:
        pass  # delivered or not, the log and the restart count below say

    _wait_all_ok(cluster, first)
    study_s = time.monotonic() - t0
    assert "interrupted (exit 75); requeueing it to resume" in log0.read_text(), _logs(first)
    task0 = cluster.run(["scontrol", "-o", "show", "job", f"{pilot}_0"]).stdout
    assert re.search(r"\bRestarts=1\b", task0), task0

    local = tmp_path / "local"
    proc = subprocess.run([sys.executable, "-m", "rnn_spectra", "study", "--preset", "smoke",
                           "--workdir", str(local)], check=False, env=env, capture_output=True, text=True,
                          timeout=STUDY_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("results.json", "claims.json"):
        slurm, here = (json.loads((d / name).read_text()) for d in (workdir, local))
        assert _strip(slurm) == _strip(here), name
    slurm, here = ((d / "report.md").read_text() for d in (workdir, local))
    assert _report_numbers(slurm) == _report_numbers(here)
    assert "it found 8 groups already trained" in slurm  # no speed from the report job's seconds

    # again, from elsewhere: every group is done and skipped, the numbers stay
    before = (workdir / "results.json").read_text()
    t1 = time.monotonic()
    second = tmp_path / "again"
    _submit(cluster, env, second, workdir)
    _wait_all_ok(cluster, second)
    again_s = time.monotonic() - t1
    tasks = [p for p in second.glob("slurm-*_*.out")]
    assert len(tasks) == 8, _logs(second)  # the pilot's 4 groups and the confirmation's 4
    for p in tasks:
        assert "(done, skipped)" in p.read_text() and " members in one program" in p.read_text(), p.name
        assert "step " not in p.read_text(), p.name
    assert _strip(json.loads((workdir / "results.json").read_text())) == _strip(json.loads(before))
    print(f"study under Slurm {study_s:.0f} s (one task requeued); resubmitted {again_s:.0f} s")
