"""Settings helpers shared by every service."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from cai_common.grpc_tls import TLSFiles


class ServiceSettings(BaseSettings):
    """Fields every service has. Subclass per service in its `config.py`."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    log_level: str = "INFO"
    # Seconds a replica drains on SIGTERM; keep below terminationGracePeriodSeconds.
    shutdown_grace_seconds: float = 20.0

    # -- gRPC transport (docs/security.md) --------------------------------------------------
    # PEM files: this service's certificate, its key, and the CA that signs every Cai service's
    # certificate. All three set: mutual TLS on every gRPC link the service serves or dials.
    # All empty: plaintext (local development).
    grpc_tls_cert_file: str = ""
    grpc_tls_key_file: str = ""
    grpc_tls_ca_file: str = ""
    # Name the servers' certificates must carry when it differs from the dialled host (e.g. a
    # port-forward to 127.0.0.1). Empty: the host of the address dialled.
    grpc_tls_server_name: str = ""

    def grpc_tls(self) -> TLSFiles | None:
        """The TLS files, read; None in plaintext mode (raises TLSConfigError when half set)."""
        from cai_common.grpc_tls import TLSFiles

        return TLSFiles.load(self.grpc_tls_cert_file, self.grpc_tls_key_file, self.grpc_tls_ca_file)


class GrpcServerSettings(ServiceSettings):
    """Fields of a service that serves gRPC (the orchestrator and the retriever)."""

    grpc_host: str = "0.0.0.0"
    grpc_port: int = 50051
    # Servers close connections after this age so round_robin clients rebalance over new pods.
    grpc_max_connection_age_seconds: float = 300.0
    # Server reflection (grpcurl and friends): off, since it maps the API for any caller.
    grpc_reflection: bool = False
    # With mutual TLS: the certificate names (common name or SAN) whose requests carry a
    # principal this service believes, comma-separated. Others get PERMISSION_DENIED.
    grpc_trusted_clients: str = "cai-gateway"
    # A plaintext port serving only grpc.health.v1 (0: none), for kubelet probes, which cannot
    # present a client certificate when the gRPC port requires one.
    grpc_health_port: int = 0

    def grpc_trusted_client_names(self) -> frozenset[str]:
        """`GRPC_TRUSTED_CLIENTS` as a set."""
        from cai_common.grpc_tls import parse_names

        return parse_names(self.grpc_trusted_clients)


def redact_url(url: str) -> str:
    """Hide the password in a URL like redis://:secret@host:6379/0 for logs and errors."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
