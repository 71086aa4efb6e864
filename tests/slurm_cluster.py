"""A real two-node SLURM cluster on this machine, for the tests that drive launch/slurm_multi_node.sbatch.

``munged``, ``slurmctld`` and two ``slurmd`` (nodes n1 and n2, each with its own port) run from
a private folder with their own munge socket and key, so they touch nothing of a system SLURM.
Needs root and the Debian packages ``slurm-wlm`` and ``munge`` (``.ci/run`` installs them);
``why_unavailable`` says in one line what is missing.

    python tests/slurm_cluster.py FOLDER      # start one by hand, for debugging; Ctrl-C stops it
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

NODES = ("n1", "n2")
# A node whose slurmd is silent this long is DOWN (SLURM's default: 300 s); its jobs are requeued (JobRequeue=1,
# sbatch --requeue). A requeued job waits cred_expire before it starts again (default 120 s).
SLURMD_TIMEOUT_S = 10
CRED_EXPIRE_S = 10
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "sinfo")


def why_unavailable() -> Optional[str]:
    """None when a cluster can be started here, else the one reason it cannot."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if os.geteuid() != 0:
        return "the SLURM tests need root (they start munged, slurmctld and slurmd); run them as root, as .ci/run does"
    if missing:
        return (
            f"SLURM is not installed ({', '.join(missing)} not found); as root: apt-get install -y slurm-wlm munge "
            "(.ci/run does this where apt-get is available)"
        )
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """Start with ``start()``, stop with ``stop()``; ``run`` runs a SLURM command against this cluster."""

    def __init__(self, folder: Path, cpus_per_node: int = 1) -> None:
        self.folder = Path(folder)
        self.cpus = cpus_per_node
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.folder / "slurm.conf")}

    # -- setup

    def write_config(self) -> None:
        f = self.folder
        for sub in ("state", "log", *(f"spool-{n}" for n in NODES)):
            (f / sub).mkdir(parents=True, exist_ok=True)
        key = f / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        host = socket.gethostname()
        ctld_port, *node_ports = (free_port() for _ in range(1 + len(NODES)))
        self.munge_socket = f / "munge.socket"
        nodes = "\n".join(
            f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={p} CPUs={self.cpus} State=UNKNOWN"
            for n, p in zip(NODES, node_ports)
        )
        (f / "slurm.conf").write_text(f"""\
ClusterName=toolkit-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire={CRED_EXPIRE_S}
StateSaveLocation={f}/state
SlurmdSpoolDir={f}/spool-%n
SlurmctldPidFile={f}/slurmctld.pid
SlurmdPidFile={f}/slurmd-%n.pid
SlurmctldLogFile={f}/log/slurmctld.log
SlurmdLogFile={f}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
KillWait=30
SlurmdTimeout={SLURMD_TIMEOUT_S}
JobRequeue=1
MinJobAge=600
SchedulerParameters=sched_interval=1
{nodes}
PartitionName=test Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")
        hosts = Path("/etc/hosts")
        text = hosts.read_text()
        missing = [n for n in NODES if not re.search(rf"\s{n}(\s|$)", text)]
        if missing:  # the node names resolve, as on a real cluster (the script itself uses NodeAddr)
            hosts.write_text(text + "".join(f"127.0.0.1 {n}\n" for n in missing))

    def start(self, timeout: float = 60) -> "Cluster":
        self.write_config()
        f = self.folder
        self._daemon(
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={f}/munge.key",
                f"--pid-file={f}/munged.pid",
                f"--log-file={f}/log/munged.log",
                f"--seed-file={f}/munged.seed",
            ]
        )
        self.wait(lambda: self.munge_socket.exists(), timeout, "munged did not start")
        self._daemon(["slurmctld", "-D", "-i"])
        self.wait(lambda: self.run("sinfo", "-h", check=False).returncode == 0, timeout, "slurmctld did not start")
        for node in NODES:
            self.start_node(node)
        self.wait(lambda: self.idle_nodes() == set(NODES), timeout, "the nodes did not become idle")
        return self

    def start_node(self, node: str) -> None:
        self._daemon(["slurmd", "-D", "-N", node])

    def stop_node(self, node: str) -> None:
        """SIGKILL the node's slurmd, as a node that fails: it says nothing, slurmctld notices by its silence."""
        for proc in self.procs:
            if proc.args[:1] == ["slurmd"] and proc.args[-1] == node and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def _daemon(self, argv: list[str]) -> None:
        log = open(self.folder / "log" / f"{argv[0]}-{len(self.procs)}.out", "w")
        self.procs.append(
            subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )

    def wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{what} ({'exited: ' + ', '.join(dead) if dead else 'timeout'}); logs in "
                    f"{self.folder / 'log'}:\n{self.logs()}"
                )
            time.sleep(0.3)

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}" for p in sorted((self.folder / "log").glob("*"))
        )

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--signal=KILL", "--user=root"], env=self.env, capture_output=True)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    # -- use

    def run(self, *argv: str, check: bool = True, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
        done = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=60, cwd=cwd)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit code {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def idle_nodes(self) -> set[str]:
        done = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
        return {line.split()[0] for line in done.stdout.splitlines() if line.split()[1:] == ["idle"]}

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, NodeList, Restarts, ExitCode, ...)."""
        text = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(item.split("=", 1) for item in text.split() if "=" in item)


if __name__ == "__main__":
    reason = why_unavailable()
    if reason:
        sys.exit(reason)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `timeout` or kill: stop the daemons too
    cluster = Cluster(Path(sys.argv[1])).start()
    print(f"cluster up: export SLURM_CONF={cluster.folder / 'slurm.conf'}", flush=True)
    try:
        signal.pause()
    finally:
        cluster.stop()
