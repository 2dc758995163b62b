"""Cai's local stack: Redis 8 with modules, llm-sim, retriever, orchestrators and gateways.

`make up` runs it with fixed ports and keeps pids in `.run/stack.json` so `make down` stops exactly
what it started. Tests and benchmarks run it on free ports in a temporary folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cai_devstack.procs import (
    Proc,
    env_for,
    free_port,
    grpc_ready,
    http_ready,
    pid_alive,
    python_module,
    redis_command,
    redis_ready,
    stop_pid,
)


@dataclass
class StackConfig:
    """Where and how to run the stack."""

    run_dir: Path
    redis_port: int = 6390
    llm_sim_port: int = 8090
    retriever_port: int = 50052
    orchestrator_port: int = 50051
    gateway_port: int = 8080
    orchestrator_replicas: int = 1
    gateway_replicas: int = 1
    # Processes per orchestrator replica and workers per gateway (`ORCHESTRATOR_PROCESSES`,
    # `GATEWAY_WORKERS`; 0: the services' own default, one per core). Set, not left to that
    # default, so a local stack is the same on any machine.
    orchestrator_processes: int = 1
    gateway_workers: int = 1
    # External services: when set, nothing is started for them.
    redis_url: str | None = None
    openai_base_url: str | None = None
    with_retriever: bool = True
    redis_appendonly: bool = True
    llm_sim_args: list[str] = field(default_factory=list)
    allow_anonymous: bool = True
    # Extra environment for every Cai service (e.g. LEASE_SECONDS for chaos tests).
    service_env: dict[str, str] = field(default_factory=dict)
    # Metrics ports of the first orchestrator, the retriever and the first gateway (0: off).
    # Other replicas get free ports.
    orchestrator_metrics_port: int = 9464
    retriever_metrics_port: int = 9465
    gateway_metrics_port: int = 9466
    # Mutual TLS on every gRPC link: a folder with ca.crt and gateway.crt/.key, orchestrator.crt/
    # .key, retriever.crt/.key (named cai-<component>; tests generate them). None: plaintext.
    tls_dir: Path | None = None

    @classmethod
    def ephemeral(cls, run_dir: Path, **overrides: object) -> StackConfig:
        """A config on free ports (for tests and benchmarks)."""
        ports = {
            "redis_port": free_port(),
            "llm_sim_port": free_port(),
            "retriever_port": free_port(),
            "orchestrator_port": free_port(),
            "gateway_port": free_port(),
            "orchestrator_metrics_port": free_port(),
            "retriever_metrics_port": free_port(),
            "gateway_metrics_port": free_port(),
        }
        return cls(run_dir=run_dir, **{**ports, **overrides})  # type: ignore[arg-type]


class Stack:
    """Starts and stops the stack's processes."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.procs: dict[str, Proc] = {}
        self._gateway_metrics_ports: dict[int, int] = {0: config.gateway_metrics_port}
        self.extra_ports: dict[str, int] = {}

    @property
    def redis_url(self) -> str:
        """The Redis every service uses."""
        return self.config.redis_url or f"redis://127.0.0.1:{self.config.redis_port}/0"

    @property
    def openai_base_url(self) -> str:
        """The LLM endpoint every service uses."""
        return self.config.openai_base_url or f"http://127.0.0.1:{self.config.llm_sim_port}/v1"

    @property
    def llm_sim_url(self) -> str:
        """llm-sim's root URL (no /v1)."""
        return f"http://127.0.0.1:{self.config.llm_sim_port}"

    def gateway_metrics_url(self, index: int = 0) -> str:
        """Prometheus metrics of the index-th gateway (its own port, not the public one)."""
        port = self._gateway_metrics_ports.setdefault(index, free_port())
        return f"http://127.0.0.1:{port}/metrics"

    def gateway_url(self, index: int = 0) -> str:
        """Base URL of the index-th gateway."""
        return f"http://127.0.0.1:{self.config.gateway_port + index}"

    def orchestrator_addr(self, index: int = 0) -> str:
        """gRPC address of the index-th orchestrator."""
        return f"127.0.0.1:{self.orchestrator_port(index)}"

    def orchestrator_port(self, index: int) -> int:
        """Port of the index-th orchestrator replica (the first is the configured one)."""
        if index == 0:
            return self.config.orchestrator_port
        key = f"orchestrator-{index}"
        if key not in self.extra_ports:
            self.extra_ports[key] = free_port()
        return self.extra_ports[key]

    def grpc_health_port(self, name: str) -> int:
        """With TLS: the plaintext health-only port of a server (`retriever`, `orchestrator-1`)."""
        key = f"{name}-health"
        if key not in self.extra_ports:
            self.extra_ports[key] = free_port()
        return self.extra_ports[key]

    def _tls_env(self, component: str, name: str, serves: bool) -> dict[str, object]:
        """TLS files of a component, and for servers a health port the readiness check can use."""
        tls = self.config.tls_dir
        if tls is None:
            return {}
        env: dict[str, object] = {
            "GRPC_TLS_CERT_FILE": tls / f"{component}.crt",
            "GRPC_TLS_KEY_FILE": tls / f"{component}.key",
            "GRPC_TLS_CA_FILE": tls / "ca.crt",
        }
        if serves:
            env["GRPC_HEALTH_PORT"] = self.grpc_health_port(name)
        return env

    def _grpc_ready_addr(self, name: str, port: int) -> str:
        """Where readiness is checked: the gRPC port, or with TLS the plaintext health port."""
        if self.config.tls_dir is None:
            return f"127.0.0.1:{port}"
        return f"127.0.0.1:{self.grpc_health_port(name)}"

    def _log(self, name: str) -> Path:
        return self.config.run_dir / "logs" / f"{name}.log"

    def _service_env(self, **extra: object) -> dict[str, str]:
        return env_for(
            {
                "LOG_LEVEL": "INFO",
                "REDIS_URL": self.redis_url,
                "OPENAI_BASE_URL": self.openai_base_url,
                "RETRIEVER_ADDR": f"127.0.0.1:{self.config.retriever_port}",
                "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                **self.config.service_env,
                **extra,
            }
        )

    # -- components -------------------------------------------------------------------------

    def redis_proc(self) -> Proc:
        """Redis 8 with RedisJSON and RediSearch."""
        data = self.config.run_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        return Proc(
            "redis",
            redis_command(self.config.redis_port, data, self.config.redis_appendonly),
            self._log("redis"),
            ready=redis_ready(self.redis_url),
        )

    def llm_sim_proc(self) -> Proc:
        """The OpenAI-compatible simulator."""
        return Proc(
            "llm-sim",
            python_module(
                "llm_sim", "--port", str(self.config.llm_sim_port), *self.config.llm_sim_args
            ),
            self._log("llm-sim"),
            ready=http_ready(f"{self.llm_sim_url}/health"),
        )

    def retriever_proc(self) -> Proc:
        """The retriever (embedded Qdrant under the run folder)."""
        return Proc(
            "retriever",
            python_module("cai_retriever"),
            self._log("retriever"),
            env=self._service_env(
                GRPC_PORT=self.config.retriever_port,
                GRPC_HOST="127.0.0.1",
                METRICS_PORT=self.config.retriever_metrics_port,
                QDRANT_PATH=self.config.run_dir / "qdrant",
                **self._tls_env("retriever", "retriever", serves=True),
            ),
            ready=grpc_ready(self._grpc_ready_addr("retriever", self.config.retriever_port)),
        )

    def orchestrator_proc(self, index: int = 0) -> Proc:
        """One orchestrator replica."""
        port = self.orchestrator_port(index)
        name = "orchestrator" if index == 0 else f"orchestrator-{index}"
        return Proc(
            name,
            python_module("cai_orchestrator"),
            self._log(name),
            env=self._service_env(
                GRPC_PORT=port,
                GRPC_HOST="127.0.0.1",
                METRICS_PORT=self.config.orchestrator_metrics_port if index == 0 else free_port(),
                REPLICA_ID=f"{name}:{port}",
                ORCHESTRATOR_PROCESSES=self.config.orchestrator_processes,
                **self._tls_env("orchestrator", name, serves=True),
            ),
            ready=grpc_ready(self._grpc_ready_addr(name, port)),
        )

    def gateway_proc(self, index: int = 0) -> Proc:
        """One gateway (the index-th listens on gateway_port + index)."""
        name = "gateway" if index == 0 else f"gateway-{index}"
        metrics_port = self._gateway_metrics_ports.setdefault(index, free_port())
        orchestrators = ",".join(
            self.orchestrator_addr(i) for i in range(self.config.orchestrator_replicas)
        )
        target = (
            f"ipv4:{orchestrators}"
            if self.config.orchestrator_replicas > 1
            else self.orchestrator_addr(0)
        )
        return Proc(
            name,
            python_module("cai_gateway"),
            self._log(name),
            env=self._service_env(
                GATEWAY_PORT=self.config.gateway_port + index,
                GATEWAY_HOST="127.0.0.1",
                GATEWAY_METRICS_PORT=metrics_port,
                ORCHESTRATOR_ADDR=target,
                GATEWAY_WORKERS=self.config.gateway_workers,
                ALLOW_ANONYMOUS="true" if self.config.allow_anonymous else "false",
                **self._tls_env("gateway", name, serves=False),
            ),
            ready=http_ready(f"{self.gateway_url(index)}/readyz"),
        )

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, proc: Proc, timeout: float = 60.0) -> Proc:
        """Start one process and wait until it is ready."""
        self.procs[proc.name] = proc.start()
        self._save()
        proc.wait_ready(timeout)
        return proc

    def up(self, timeout: float = 120.0) -> None:
        """Start everything that is not external, in dependency order."""
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            if not self.config.redis_url:
                self.start(self.redis_proc(), 30)
            if not self.config.openai_base_url:
                self.start(self.llm_sim_proc(), 30)
            if self.config.with_retriever:
                self.start(self.retriever_proc(), timeout)
            for i in range(self.config.orchestrator_replicas):
                self.start(self.orchestrator_proc(i), timeout)
            for i in range(self.config.gateway_replicas):
                self.start(self.gateway_proc(i), timeout)
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Stop everything this stack started, newest first."""
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        self.procs.clear()
        self._save()

    def _save(self) -> None:
        state = {
            "pids": {name: p.pid for name, p in self.procs.items()},
            "gateway_url": self.gateway_url(),
            "redis_url": self.redis_url,
        }
        path = self.config.run_dir / "stack.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state, indent=2))


def stop_recorded(run_dir: Path) -> list[str]:
    """Stop the processes recorded in `run_dir/stack.json` (by `make up`); returns their names."""
    path = run_dir / "stack.json"
    if not path.exists():
        return []
    pids: dict[str, int] = json.loads(path.read_text()).get("pids", {})
    stopped = []
    for name, pid in reversed(list(pids.items())):
        if pid_alive(pid):
            stop_pid(pid)
            stopped.append(name)
    path.unlink()
    return stopped


def running_recorded(run_dir: Path) -> dict[str, int]:
    """Recorded processes that are still alive."""
    path = run_dir / "stack.json"
    if not path.exists():
        return {}
    pids: dict[str, int] = json.loads(path.read_text()).get("pids", {})
    return {name: pid for name, pid in pids.items() if pid_alive(pid)}


def env_int(name: str, default: int) -> int:
    """An integer from the environment."""
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default
