"""Several processes of one service in one pod: a supervisor that runs N copies and keeps them.

One Python process uses one core at most. A service that should use the cores of its pod runs
as a supervisor (`python -m cai_<service>` with N > 1) that starts N workers — the same command
with `CAI_WORKER_INDEX` set — and:

- restarts a worker that dies (after a short backoff); a worker that exits with a configuration
  error (exit code 2), or more than `max_restarts` deaths within `restart_window_s`, stops all
  of them and the supervisor exits non-zero, so Kubernetes restarts the pod;
- forwards SIGTERM/SIGINT to every worker and exits once all have drained;
- serves one /metrics for the pod: workers write their metrics to files in a shared folder
  (prometheus_client's multiprocess mode, `PROMETHEUS_MULTIPROC_DIR`) and the supervisor sums
  them; a dead worker's gauges are dropped, its counters kept;
- keeps a health board: one byte per worker, 1 while that worker is ready, so each worker can
  report the pod's readiness, not only its own (probes reach whichever worker the kernel picks).

Workers die with the supervisor (PR_SET_PDEATHSIG): a supervisor killed outright leaves no
orphans. The supervisor imports neither the service nor its dependencies.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

WORKER_INDEX = "CAI_WORKER_INDEX"  # set in a worker: its slot, 0..N-1
WORKER_DIR = "CAI_WORKER_DIR"  # set in a worker: the supervisor's folder (health board)
SUPERVISOR_PID = "CAI_SUPERVISOR_PID"
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
CONFIG_ERROR = 2  # a worker that exits with this will not do better on a restart
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cpu_limit(cpu_max: Path = CPU_MAX) -> int:
    """Cores this process may use: the cgroup v2 CPU quota rounded up (a container's CPU limit),
    capped by the CPUs it may run on; without a quota, those CPUs."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def process_count(setting: int) -> int:
    """How many processes to run: `setting`, or with 0 (auto) the CPU limit."""
    return setting if setting > 0 else cpu_limit()


def worker_index() -> int | None:
    """This process's slot under a supervisor (None: not supervised)."""
    raw = os.environ.get(WORKER_INDEX, "")
    return int(raw) if raw.isdigit() else None


def die_with_supervisor() -> None:
    """Get SIGTERM (and drain) when the supervisor dies, however it dies (Linux only)."""
    parent = os.environ.get(SUPERVISOR_PID, "")
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if parent.isdigit() and os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)  # it died before prctl took effect


class HealthBoard:
    """One byte per worker in a shared file: 1 while that worker is ready, 0 otherwise.

    The supervisor creates it with every slot 0 and zeroes the slot of a worker that dies.
    """

    FILE = "health"

    def __init__(self, path: Path, index: int) -> None:
        self.path = path
        self.index = index
        self._fd = os.open(path, os.O_RDWR)
        self._size = os.fstat(self._fd).st_size

    @classmethod
    def for_worker(cls) -> HealthBoard | None:
        """The board of this worker's supervisor (None: not supervised)."""
        index = worker_index()
        folder = os.environ.get(WORKER_DIR, "")
        if index is None or not folder:
            return None
        return cls(Path(folder) / cls.FILE, index)

    @classmethod
    def create(cls, folder: Path, workers: int) -> Path:
        """A board with every slot 0; returns its path."""
        path = folder / cls.FILE
        path.write_bytes(bytes(workers))
        return path

    def set(self, serving: bool) -> None:
        """Say whether this worker is ready."""
        os.pwrite(self._fd, b"\x01" if serving else b"\x00", self.index)

    def all_serving(self) -> bool:
        """Whether every worker says it is ready."""
        return all(os.pread(self._fd, self._size, 0))

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


def clear_slot(board: Path, index: int) -> None:
    """Mark a worker not ready (the supervisor, when it died)."""
    with contextlib.suppress(OSError):
        fd = os.open(board, os.O_WRONLY)
        try:
            os.pwrite(fd, b"\x00", index)
        finally:
            os.close(fd)


@dataclass
class _Worker:
    index: int
    popen: subprocess.Popen[bytes] | None = None
    generation: int = 0
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Runs `count` workers of a service and keeps them running until SIGTERM.

    Args:
        name: The service, for logs and the folder's name.
        count: Workers to run.
        command: The worker's command line (the service's own `python -m …`).
        worker_env: The environment a worker gets on top of ours, by slot and generation (how
            often that slot was started before).
        metrics_port: Serve the workers' summed metrics on this port (0: none).
        metrics_host: The address to serve them on.
        pass_fds: File descriptors the workers inherit (a listening socket).
    """

    name: str
    count: int
    command: list[str]
    worker_env: Callable[[int, int], Mapping[str, str]] = lambda index, generation: {}
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"
    pass_fds: tuple[int, ...] = ()
    max_restarts: int = 5
    restart_window_s: float = 60.0
    poll_s: float = 0.1
    _workers: list[_Worker] = field(default_factory=list)
    _deaths: list[float] = field(default_factory=list)
    _stopping: bool = False
    _exit_code: int = 0

    def run(self) -> int:
        """Start the workers, keep them running until SIGTERM/SIGINT, drain; the exit code."""
        folder = Path(tempfile.mkdtemp(prefix=f"cai-{self.name}-"))
        self.folder = folder
        self.metrics_dir = folder / "metrics"
        self.metrics_dir.mkdir()
        self.board = HealthBoard.create(folder, self.count)
        try:
            self._serve_metrics()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
            self._workers = [_Worker(i) for i in range(self.count)]
            for worker in self._workers:
                self._start(worker)
            log.info("workers started", extra={"service": self.name, "workers": self.count})
            while any(w.popen is not None or w.restart_at is not None for w in self._workers):
                self._tick()
                time.sleep(self.poll_s)
            log.info("workers stopped", extra={"service": self.name, "code": self._exit_code})
            return self._exit_code
        finally:
            self._stop_all(signal.SIGKILL)  # only if we leave by an exception
            shutil.rmtree(folder, ignore_errors=True)

    def worker_pids(self) -> list[int]:
        """Pids of the running workers."""
        return [w.popen.pid for w in self._workers if w.popen is not None]

    def _serve_metrics(self) -> None:
        if self.metrics_port <= 0:
            return
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.metrics_dir))
        start_http_server(self.metrics_port, addr=self.metrics_host, registry=registry)
        log.info("metrics listening", extra={"port": self.metrics_port, "workers": self.count})

    def _start(self, worker: _Worker) -> None:
        env = {
            **os.environ,
            **self.worker_env(worker.index, worker.generation),
            WORKER_INDEX: str(worker.index),
            WORKER_DIR: str(self.folder),
            SUPERVISOR_PID: str(os.getpid()),
            MULTIPROC_DIR: str(self.metrics_dir),
        }
        # A process group of its own: a terminal's Ctrl-C reaches the supervisor only, which
        # passes it on once (uvicorn takes a second SIGINT as "exit now, no drain").
        worker.popen = subprocess.Popen(
            self.command, env=env, pass_fds=self.pass_fds, process_group=0
        )
        worker.generation += 1
        worker.restart_at = None
        log.info(
            "worker started",
            extra={"service": self.name, "worker": worker.index, "pid": worker.popen.pid},
        )

    def _tick(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            if worker.popen is not None:
                code = worker.popen.poll()
                if code is not None:
                    self._exited(worker, code, now)
            elif worker.restart_at is not None and now >= worker.restart_at:
                if self._stopping:
                    worker.restart_at = None
                else:
                    self._start(worker)

    def _exited(self, worker: _Worker, code: int, now: float) -> None:
        assert worker.popen is not None
        pid = worker.popen.pid
        worker.popen = None
        clear_slot(self.board, worker.index)
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self.metrics_dir))
        if self._stopping:
            log.info("worker stopped", extra={"worker": worker.index, "pid": pid, "code": code})
            return
        self._deaths = [t for t in self._deaths if now - t < self.restart_window_s] + [now]
        if code == CONFIG_ERROR:
            log.error("worker failed to start; stopping", extra={"worker": worker.index})
            self._give_up(code)
        elif len(self._deaths) > self.max_restarts:
            log.error(
                "workers keep dying; stopping so the pod restarts",
                extra={"deaths": len(self._deaths), "window_s": self.restart_window_s},
            )
            self._give_up(1)
        else:
            backoff = min(5.0, 0.5 * 2 ** (len(self._deaths) - 1))
            worker.restart_at = now + backoff
            log.error(
                "worker died; restarting",
                extra={"worker": worker.index, "pid": pid, "code": code, "backoff_s": backoff},
            )

    def _give_up(self, code: int) -> None:
        self._exit_code = code
        self._stopping = True
        self._stop_all(signal.SIGTERM)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if not self._stopping:
            log.info("draining workers", extra={"service": self.name, "signal": sig})
        self._stopping = True
        self._stop_all(sig)

    def _stop_all(self, sig: int) -> None:
        for worker in self._workers:
            worker.restart_at = None
            if worker.popen is not None and worker.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.popen.send_signal(sig)


def module_command(module: str) -> list[str]:
    """`python -m module` with this interpreter and its arguments."""
    return [sys.executable, "-m", module, *sys.argv[1:]]
