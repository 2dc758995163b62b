"""Who may call Cai's gRPC services: mutual TLS credentials and the trusted-caller check.

Requests carry the caller's tenant (`Principal`), set by the gateway after it authenticated an
API key. With mutual TLS on, a server believes that principal only from callers whose verified
client certificate names a trusted client (`GRPC_TRUSTED_CLIENTS`, e.g. the gateway):

* a caller without a certificate signed by the CA never completes the TLS handshake (its calls
  fail with UNAVAILABLE and the server logs the handshake failure);
* a caller with a CA-signed certificate of another name gets PERMISSION_DENIED, naming itself;
* the health service stays open to every TLS peer (it carries no tenant data).

Without TLS files every link is plaintext and requests are trusted as they come: the local
stack, and clusters that rely on NetworkPolicies alone (docs/security.md).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

# Methods every TLS peer may call: health carries no tenant data, and the kubelet's and other
# probes must not need an identity of their own.
OPEN_SERVICES = ("/grpc.health.v1.Health/",)


class TLSConfigError(ValueError):
    """TLS settings that cannot work; the message names the settings to fix."""


@dataclass(frozen=True)
class TLSFiles:
    """PEM bytes of this service's certificate chain, its key and the CA it trusts."""

    cert: bytes
    key: bytes
    ca: bytes

    @classmethod
    def load(cls, cert_file: str, key_file: str, ca_file: str) -> TLSFiles | None:
        """Read the three files; None when none is set (plaintext).

        Raises:
            TLSConfigError: only some are set, or one cannot be read.
        """
        files = {
            "GRPC_TLS_CERT_FILE": cert_file,
            "GRPC_TLS_KEY_FILE": key_file,
            "GRPC_TLS_CA_FILE": ca_file,
        }
        if not any(files.values()):
            return None
        missing = [name for name, path in files.items() if not path]
        if missing:
            raise TLSConfigError(
                f"mutual TLS needs GRPC_TLS_CERT_FILE, GRPC_TLS_KEY_FILE and GRPC_TLS_CA_FILE "
                f"together; {', '.join(missing)} not set"
            )
        read: dict[str, bytes] = {}
        for name, path in files.items():
            try:
                read[name] = Path(path).read_bytes()
            except OSError as exc:
                raise TLSConfigError(f"{name}={path}: {exc.strerror or exc}") from exc
        return cls(read["GRPC_TLS_CERT_FILE"], read["GRPC_TLS_KEY_FILE"], read["GRPC_TLS_CA_FILE"])

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server side: present our certificate; require and verify the client's against the CA."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client side: verify the server against the CA; present our certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def parse_names(raw: str | Iterable[str]) -> frozenset[str]:
    """Comma-separated identities (or an iterable of them) as a set, blanks dropped."""
    items = raw.split(",") if isinstance(raw, str) else raw
    return frozenset(item.strip() for item in items if item.strip())


def peer_names(context: grpc.aio.ServicerContext) -> list[str]:
    """Names in the caller's verified certificate: its common name, then its SANs."""
    auth = context.auth_context()
    names = [
        value.decode("utf-8", "replace")
        for key in ("x509_common_name", "x509_subject_alternative_name")
        for value in auth.get(key, [])
    ]
    return list(dict.fromkeys(names))


Handler = Callable[..., Any]


class TrustedClientsInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only when the caller's verified certificate names a trusted client.

    Installed by `GrpcService` when TLS is on, so every servicer that reads a `Principal` can
    trust it without checking anything itself.
    """

    def __init__(self, trusted: Iterable[str]) -> None:
        self.trusted = frozenset(trusted)
        if not self.trusted:
            raise TLSConfigError(
                "GRPC_TRUSTED_CLIENTS is empty: with mutual TLS on, no caller could be trusted"
            )

    async def _refusal(self, method: str, context: grpc.aio.ServicerContext) -> None:
        names = peer_names(context)
        if not names:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "no verified client certificate: this server accepts calls only over mutual TLS",
            )
        if self.trusted.isdisjoint(names):
            log.warning("untrusted grpc caller refused", extra={"peer": names, "method": method})
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"client certificate {names[0]!r} is not a trusted caller "
                f"(trusted: {', '.join(sorted(self.trusted))}; see GRPC_TRUSTED_CLIENTS)",
            )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        method = details.method
        check = self._refusal
        for kind, factory in (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        ):
            inner = getattr(handler, kind)
            if inner is not None:
                return factory(
                    _guarded(inner, method, check),
                    handler.request_deserializer,
                    handler.response_serializer,
                )
        return handler


def _guarded(
    inner: Handler,
    method: str,
    check: Callable[[str, grpc.aio.ServicerContext], Awaitable[None]],
) -> Handler:
    """`inner` behind `check`, keeping its shape (async generator or coroutine)."""
    if inspect.isasyncgenfunction(inner):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await check(method, context)
            async for reply in inner(request, context):
                yield reply

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await check(method, context)
        result = inner(request, context)
        return await result if inspect.isawaitable(result) else result

    return call
