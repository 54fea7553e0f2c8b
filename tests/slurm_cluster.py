"""A private single-node Slurm cluster in a temporary folder, for the slow test that runs the
study's Slurm scripts under a real Slurm.

Its own munged (own key, socket, pid and log files), slurmctld and slurmd (own slurm.conf,
state and spool folders, free ports), all run as root in the foreground and stopped at the end,
even after a failure. No accounting daemon: jobs are followed with squeue and scontrol. The
client commands find the cluster through SLURM_CONF (``Cluster.env``).

    with SlurmCluster(tmp_path / "slurm") as cluster:
        subprocess.run(["sbatch", "--wrap=hostname"], env=cluster.env)

Needs root and Debian's slurm-wlm and munge packages (Slurm 22.05 on bookworm); where it
cannot start, ``ClusterUnavailable`` says why in one line (the test skips with it).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel")


class ClusterUnavailable(RuntimeError):
    """The cluster cannot be started here; the message is the one-line reason."""


def _which(name: str) -> str | None:
    # the daemons live in /usr/sbin, which a non-login PATH may lack
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")


def missing_requirement() -> str | None:
    """Why this machine cannot run the cluster (not root, programs missing), or None."""
    if os.geteuid() != 0:
        return "needs root (slurmd runs jobs as their user, munged and the daemons here as root)"
    missing = [n for n in DAEMONS + CLIENTS if _which(n) is None]
    if missing:
        return (f"{', '.join(missing)} not installed "
                "(as root: apt-get install -y slurm-wlm munge)")
    return None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:  # all bound at once: n different ports
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _real_memory_mb() -> int:
    """The node's memory as slurmd itself measures it (`slurmd -C`), so the node is not drained
    for having less than configured."""
    out = subprocess.run([_which("slurmd"), "-C"], check=False, capture_output=True, text=True,
                         timeout=30).stdout
    for word in out.split():
        if word.startswith("RealMemory="):
            return int(word.split("=", 1)[1])
    raise ClusterUnavailable(f"slurmd -C printed no RealMemory: {out.strip()[:200]!r}")


def _tail(path: Path, lines: int = 6) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


class SlurmCluster:
    """One node, one partition (``test``), all of it under ``root``; a context manager."""

    def __init__(self, root: Path, start_timeout_s: float = 60.0):
        self.root = Path(root)
        self.start_timeout_s = start_timeout_s
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        # a job's environment is the submitter's (--export=ALL): keep the host's own Slurm
        # settings and any outer job's out of it
        for k in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SQUEUE_"))]:
            if k != "SLURM_CONF":
                del self.env[k]
        self.env["PATH"] = f"{self.env.get('PATH', '')}:/usr/sbin:/sbin"

    # -- set-up ----------------------------------------------------------------------------

    def _write_munge_key(self) -> Path:
        key = self.root / "munge" / "munge.key"
        key.parent.mkdir(parents=True, mode=0o700)
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        return key

    def _write_conf(self) -> None:
        ctld_port, slurmd_port = _free_ports(2)
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(mode=0o755)
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=rnnspectratest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # a requeued job may start again only once its credential expires (120 s default)
            f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            # finished jobs stay visible to scontrol this long (no accounting to ask instead)
            "MinJobAge=600",
            (f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} "
             f"RealMemory={_real_memory_mb()} State=UNKNOWN"),
            f"PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _start(self, name: str, argv: list[str]) -> None:
        with open(self.root / "log" / f"{name}.out", "wb") as log:  # the daemon holds its own copy
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                env=self.env, start_new_session=True)

    def _why_down(self) -> str:
        dead = [f"{n} exited {p.returncode}" for n, p in self.procs.items() if p.poll() is not None]
        logs = "; ".join(f"{n}: {_tail(self.root / 'log' / f'{n}.log')} {_tail(self.root / 'log' / f'{n}.out')}"
                         for n in self.procs)
        return f"{', '.join(dead) or 'all running'}; {logs}"

    def start(self) -> SlurmCluster:
        reason = missing_requirement()
        if reason:
            raise ClusterUnavailable(reason)
        self.root.mkdir(parents=True, exist_ok=True)
        key = self._write_munge_key()
        self._write_conf()
        m = self.munge_socket.parent
        self._start("munged", [_which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={m / 'munged.pid'}",
                               f"--log-file={self.root / 'log' / 'munged.log'}",
                               f"--seed-file={m / 'munged.seed'}"])
        self._wait(lambda: self.munge_socket.exists(), "munged's socket")
        self._start("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self._run_ok(["scontrol", "ping"], "UP"), "slurmctld")
        self._start("slurmd", [_which("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
        self._wait(lambda: self._run_ok(["sinfo", "-h", "-N", "-o", "%t"], "idle"), "the node idle")
        return self

    def _run_ok(self, argv: list[str], expect: str) -> bool:
        proc = subprocess.run(argv, check=False, capture_output=True, text=True, env=self.env, timeout=30)
        return proc.returncode == 0 and expect in proc.stdout

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs.values()):
                break
            if ready():
                return
            time.sleep(0.5)
        raise ClusterUnavailable(f"no {what} within {self.start_timeout_s:.0f} s: {self._why_down()}")

    # -- tear-down -------------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel every job (slurmstepd outlives slurmd), then stop the daemons, newest first."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            try:
                self.run(["scancel", f"--user={getpass.getuser()}"])
                deadline = time.monotonic() + 30
                while self.queue() and time.monotonic() < deadline:
                    time.sleep(0.5)
            except (OSError, subprocess.SubprocessError):
                pass  # the daemons go anyway
        for name in reversed(DAEMONS):
            p = self.procs.pop(name, None)
            if p is None:
                continue
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- following jobs --------------------------------------------------------------------

    def run(self, argv: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """A client command (sbatch, squeue, scancel ...) against this cluster."""
        return subprocess.run(argv, check=False, capture_output=True, text=True, env=self.env,
                              timeout=timeout, **kw)

    def queue(self) -> list[tuple[str, str, str, str]]:
        """The jobs still queued or running: (job id, name, state, reason)."""
        out = self.run(["squeue", "-h", "-o", "%i|%j|%T|%r"]).stdout
        return [tuple(line.split("|", 3)) for line in out.splitlines() if line.strip()]

    def wait_empty(self, timeout_s: float, poll_s: float = 2.0) -> None:
        """Until no job is queued or running; AssertionError on a dependency that can never be
        met (a job before it failed) or on the timeout, with the queue and the daemons' logs."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            q = self.queue()
            if not q:
                return
            stuck = [j for j in q if "DependencyNeverSatisfied" in j[3]]
            if stuck:
                raise AssertionError(f"jobs whose dependency failed: {stuck}")
            time.sleep(poll_s)
        raise AssertionError(f"jobs still queued after {timeout_s:.0f} s: {self.queue()}; "
                             f"{self._why_down()}")

    def job_exits(self) -> dict[str, str]:
        """Every job slurmctld still remembers (MinJobAge) -> 'STATE exit:signal'."""
        out = self.run(["scontrol", "-o", "show", "job"]).stdout
        jobs = {}
        for line in out.splitlines():
            fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
            if "JobId" in fields:
                key = fields["JobId"] + (f" ({fields['JobName']})" if "JobName" in fields else "")
                jobs[key] = f"{fields.get('JobState')} {fields.get('ExitCode')}"
        return jobs
