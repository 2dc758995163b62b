"""CPU time and peak RSS of the processes under test, by pid (psutil)."""

from __future__ import annotations

import contextlib
import os
import threading

import psutil


class ProcMonitor:
    """CPU seconds (user + system) between two snapshots and peak RSS sampled in between.

    A process added with `tree=True` (a supervisor and its workers, a server with helpers)
    counts with its descendants: the live ones, and the CPU of those that ended (reaped).
    """

    def __init__(self, pids: dict[str, int], interval_s: float = 0.2) -> None:
        self.procs: dict[str, psutil.Process] = {}
        self.interval_s = interval_s
        self._peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._trees: set[str] = set()
        for name, pid in pids.items():
            self.add(name, pid)

    def add(self, name: str, pid: int, tree: bool = False) -> None:
        """Watch one more process (with its descendants when `tree`)."""
        with self._lock:
            self.procs[name] = psutil.Process(pid)
            if tree:
                self._trees.add(name)
            else:
                self._trees.discard(name)

    def _family(self, name: str, proc: psutil.Process) -> list[psutil.Process]:
        if name not in self._trees:
            return [proc]
        try:
            return [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return [proc]

    def remove(self, name: str) -> None:
        """Stop watching a process."""
        with self._lock:
            self.procs.pop(name, None)

    def cpu(self) -> dict[str, float]:
        """Cumulative CPU seconds of every watched process (0 for one that is gone)."""
        out: dict[str, float] = {}
        with self._lock:
            items = list(self.procs.items())
        for name, proc in items:
            try:
                t = proc.cpu_times()
                out[name] = t.user + t.system
            except psutil.Error:
                out[name] = 0.0
                continue
            if name in self._trees:
                out[name] += t.children_user + t.children_system
                for child in self._family(name, proc)[1:]:
                    with contextlib.suppress(psutil.Error):
                        c = child.cpu_times()
                        out[name] += c.user + c.system
        return out

    def rss(self) -> dict[str, int]:
        """Current RSS in bytes."""
        out: dict[str, int] = {}
        with self._lock:
            items = list(self.procs.items())
        for name, proc in items:
            for member in self._family(name, proc):
                with contextlib.suppress(psutil.Error):
                    out[name] = out.get(name, 0) + member.memory_info().rss
        return out

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            for name, rss in self.rss().items():
                if rss > self._peak.get(name, 0):
                    self._peak[name] = rss

    def start_peaks(self) -> None:
        """Start sampling RSS (peaks reset)."""
        self.stop_peaks()
        self._peak = dict(self.rss())
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop_peaks(self) -> dict[str, int]:
        """Stop sampling; peak RSS per process since start_peaks()."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            for name, rss in self.rss().items():
                self._peak[name] = max(self._peak.get(name, 0), rss)
        return dict(self._peak)


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """after − before per process, for processes present in both."""
    return {k: round(after[k] - before[k], 4) for k in after if k in before}


def self_pid() -> int:
    """This process: the load generator."""
    return os.getpid()
