"""Client of the retriever service (gRPC), returning plain passages."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import grpc

from cai.v1 import common_pb2, retriever_pb2
from cai.v1.retriever_pb2_grpc import RetrieverStub
from cai_common.grpc_server import client_channel
from cai_common.grpc_tls import TLSFiles

log = logging.getLogger(__name__)


@dataclass
class Passage:
    """One retrieved chunk, with what a UI needs to cite it."""

    text: str
    score: float
    source: str
    title: str
    document_id: str
    chunk_id: str
    metadata: dict[str, str] = field(default_factory=dict)

    def citation(self) -> dict[str, object]:
        """What the `retrieval` event lists (no passage text: UIs cite, the model reads)."""
        return {
            "source": self.source,
            "title": self.title,
            "document_id": self.document_id,
            "chunk_id": self.chunk_id,
            "score": round(self.score, 4),
        }


class RetrieverError(RuntimeError):
    """The retriever failed or is unreachable; the message says which."""


class RetrieverClient:
    """Searches the tenant's knowledge base."""

    def __init__(
        self,
        addr: str,
        timeout_s: float = 10.0,
        tls: TLSFiles | None = None,
        server_name: str = "",
    ) -> None:
        self.addr = addr
        self.timeout_s = timeout_s
        self.tls = tls
        self.server_name = server_name
        self._channel: grpc.aio.Channel | None = None
        self._stub: RetrieverStub | None = None

    def _client(self) -> RetrieverStub:
        if self._stub is None:  # created lazily, on the event loop that uses it
            self._channel = client_channel(self.addr, tls=self.tls, server_name=self.server_name)
            self._stub = RetrieverStub(self._channel)
        return self._stub

    async def search(
        self, tenant: str, query: str, collection: str = "", k: int = 4, threshold: float = 0.0
    ) -> list[Passage]:
        """Passages for `query` from the tenant's documents, best first.

        Raises:
            RetrieverError: the retriever answered with an error or could not be reached.
        """
        request = retriever_pb2.SearchRequest(
            principal=common_pb2.Principal(tenant_id=tenant),
            query=query,
            collection=collection,
            k=k,
            score_threshold=threshold,
        )
        try:
            reply = await self._client().Search(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return []  # nothing ingested into that collection yet
            raise RetrieverError(f"retriever {exc.code().name}: {exc.details()}") from exc
        return [
            Passage(
                text=p.text,
                score=p.score,
                source=p.source,
                title=p.title,
                document_id=p.document_id,
                chunk_id=p.chunk_id,
                metadata=dict(p.metadata),
            )
            for p in reply.passages
        ]

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close()
