"""``RUN/.lock``: a lease on a run folder that the live writer renews, so a dead writer's lock expires on any host.

The lock is a small JSON record: who holds it (host, pid and the pid's start time, the boot and
PID namespace the pid belongs to, SLURM job id, restart count and node) and when it was last renewed
(``heartbeat``). A thread of the writer renews it every ``expiry_s / 10`` seconds. Another process
judges it:

* live: renewed within ``output.lock_expiry_s`` seconds, by a writer that is not provably gone;
* dead at once: the writer ran on this host (and SLURM node, boot and PID namespace: containers
  with host networking share the hostname, not the pids) and its process is gone or its pid now
  belongs to another process (a reused pid); or it is an earlier run of this same SLURM job (a
  requeued job taking its own run back: SLURM runs one instance of a job at a time), or of this same
  torchrun elastic job (its rendezvous id) before the agents restarted their workers;
* dead after ``expiry_s``: everything else, e.g. a writer on a node that failed.

The holder loses its lease when the lock no longer holds its token or when it could not renew it
for ``expiry_s`` (suspended with Ctrl-Z / ``kill -STOP``, a disk out of reach): another process may
have taken the run over meanwhile. Then it stops renewing, and ``RunLock.lost`` says why, so the
writer stops writing (``training.loop`` asks before every checkpoint and model write).

A lock appears complete or not at all (written under a private name, then hard-linked into
place, which fails if one exists: also on NFS). Replacing a dead lock is guarded by a
``.lock.takeover`` folder, so two processes cannot both take over the same dead lock.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

from toolkit.fileio import atomic_write_text

TAKEOVER_STALE_S = 60.0  # a takeover folder older than this was left by a process killed while taking over


def process_start_time(pid: int) -> Optional[int]:
    """The pid's start time in clock ticks since boot (Linux), to tell a reused pid from the writer."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_namespace() -> Optional[str]:
    """Which pids this process's pid belongs to: the boot and the PID namespace (Linux), else None.

    Two containers with host networking share a hostname, not their pids: a pid is judged only
    within its own namespace.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}:{namespace.st_dev}:{namespace.st_ino}"


def elastic_run_id() -> Optional[str]:
    """The torchrun rendezvous id (``--rdzv-id``) of an elastic job, None outside one (or its default "none")."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    return run_id if run_id and run_id != "none" else None


def my_record(expiry_s: float, token: Optional[str] = None) -> dict:
    """The lock record this process writes (and renews)."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "pid_started": process_start_time(pid),
        "pid_namespace": pid_namespace(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
        "node": os.environ.get("SLURMD_NODENAME"),
        "elastic_run": elastic_run_id(),
        "elastic_restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0),
        "token": token or uuid.uuid4().hex,
        "heartbeat": time.time(),
        "expiry_s": float(expiry_s),
    }


def read_record(path: Path) -> Optional[dict]:
    """The lock's record; a lock of an older toolkit (``host pid``) is read as one renewed at its mtime.

    None when there is no lock. A lock that cannot be parsed counts as renewed at its mtime.
    """
    try:
        text = path.read_text(encoding="utf-8")
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
        if isinstance(record, dict) and "heartbeat" in record:
            return record
    except json.JSONDecodeError:
        pass
    host, _, pid = text.strip().partition(" ")
    return {"host": host, "pid": int(pid) if pid.isdigit() else None, "heartbeat": mtime, "legacy": True}


def describe(record: dict) -> str:
    where = f"{record.get('host')} pid {record.get('pid')}"
    if record.get("slurm_job"):
        where += f", SLURM job {record['slurm_job']} on {record.get('node')}"
    return where


def is_dead(record: dict, expiry_s: float, now: Optional[float] = None) -> Optional[str]:
    """Why the lock's writer is gone (None: it may be alive, so the lock holds)."""
    now = time.time() if now is None else now
    mine = my_record(expiry_s)
    job = record.get("slurm_job")
    if job and job == mine["slurm_job"] and int(record.get("slurm_restart") or 0) < mine["slurm_restart"]:
        return f"an earlier run of this SLURM job ({job}, requeued)"
    elastic = record.get("elastic_run")
    if elastic and elastic == mine["elastic_run"] and int(record.get("elastic_restart") or 0) < mine["elastic_restart"]:
        return f"an earlier round of this torchrun elastic job ({elastic}, restarted)"
    same_machine = (
        record.get("host") == mine["host"]
        and record.get("node") == mine["node"]
        and record.get("pid_namespace", mine["pid_namespace"]) == mine["pid_namespace"]  # older locks lack it
    )
    pid = record.get("pid")
    if same_machine and isinstance(pid, int):
        started = process_start_time(pid)
        if started is None and not Path("/proc/self/stat").exists():  # not Linux: ask the kernel
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return "its process is gone"
            except PermissionError:
                pass
        elif started is None:
            return "its process is gone"
        elif record.get("pid_started") is not None and started != record["pid_started"]:
            return "its pid now belongs to another process"
    age = now - float(record.get("heartbeat") or 0)
    if age > expiry_s:
        return f"not renewed for {age:.0f} s (output.lock_expiry_s={expiry_s:g})"
    return None


class RunLock:
    """This process's lease on one run folder: ``acquire`` (or ``create``), then ``release``."""

    def __init__(self, path: Path, expiry_s: float) -> None:
        self.path, self.expiry_s = Path(path), float(expiry_s)
        self.record = my_record(expiry_s)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._renewed = time.monotonic()  # when this process last wrote its heartbeat
        self._lost: Optional[str] = None  # once lost, a lease stays lost

    @property
    def token(self) -> str:
        return self.record["token"]

    def create(self) -> bool:
        """Create the lock if there is none (atomically, complete): True when it is now ours."""
        self.record["heartbeat"], self._renewed = time.time(), time.monotonic()
        private = self.path.with_name(f".lock-new-{self.token}")
        private.write_text(json.dumps(self.record) + "\n", encoding="utf-8")
        try:
            os.link(private, self.path)  # fails if a lock exists; never shows a half-written one
            return True
        except FileExistsError:
            return False
        finally:
            private.unlink(missing_ok=True)

    def acquire(self) -> Optional[dict]:
        """Take the lock, replacing a dead writer's; the live holder's record when it is refused (else None)."""
        for _ in range(3):
            if self.create():
                return None
            held = read_record(self.path)
            if held is None:
                continue  # released meanwhile
            if held.get("host") == self.record["host"] and held.get("pid") == self.record["pid"]:
                self._overwrite()  # this process, e.g. an earlier run in the same Python session
                return None
            if is_dead(held, self.expiry_s) is None:
                return held
            if self._take_over(held):
                return None
        return read_record(self.path) or {"host": "?", "pid": "?", "note": "keeps changing"}

    def _take_over(self, dead: dict) -> bool:
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            guard.mkdir()
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > TAKEOVER_STALE_S:
                    guard.rmdir()
            except OSError:
                pass
            time.sleep(0.2)
            return False
        try:
            if read_record(self.path) != dead:  # someone renewed or replaced it meanwhile
                return False
            self._overwrite()
            return True
        finally:
            guard.rmdir()

    def _overwrite(self) -> None:
        self.record["heartbeat"], self._renewed = time.time(), time.monotonic()
        atomic_write_text(self.path, json.dumps(self.record) + "\n")

    def holds(self) -> bool:
        held = read_record(self.path)
        return bool(held) and held.get("token") == self.token

    def lost(self) -> Optional[str]:
        """Why this process no longer holds its lease (None: it does). Once lost, always lost."""
        if self._lost is None:
            silent = time.monotonic() - self._renewed
            if silent > self.expiry_s:
                self._lost = (
                    f"this process could not renew it for {silent:.0f} s (suspended, or its disk out of reach), "
                    f"longer than output.lock_expiry_s={self.expiry_s:g}"
                )
            elif not self.holds():
                held = read_record(self.path)
                self._lost = f"{describe(held)} holds it now" if held else "the lock was removed"
        return self._lost

    def start_renewing(self) -> None:
        """Renew the heartbeat in a daemon thread until ``release`` or until the lease is lost."""
        interval = max(0.2, self.expiry_s / 10)

        def renew() -> None:
            while not self._stop.wait(interval):
                try:
                    if self.lost():  # never write over the lock of a process that took the run over
                        return
                    self._overwrite()
                except OSError:  # a full or briefly unreachable disk: try again at the next beat
                    pass

        self._thread = threading.Thread(target=renew, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and remove the lock if it is still ours (never another process's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.holds():
            self.path.unlink(missing_ok=True)
