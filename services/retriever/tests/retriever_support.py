"""Helpers shared by the retriever's tests (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from cai.v1 import common_pb2, retriever_pb2, retriever_pb2_grpc
from cai_retriever.config import Settings
from cai_retriever.embeddings import SentenceTransformerEmbedder
from cai_retriever.server import RetrieverServer

# Small enough that the oversized-document test is cheap, large enough for every test document.
TEST_MAX_DOCUMENT_BYTES = 200_000


def principal(tenant: str) -> common_pb2.Principal:
    return common_pb2.Principal(tenant_id=tenant, subject="test")


def make_settings(tmp: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "grpc_host": "127.0.0.1",
        "grpc_port": 0,
        "metrics_port": 0,
        "qdrant_path": str(tmp / "qdrant"),
        "max_document_bytes": TEST_MAX_DOCUMENT_BYTES,
        "health_check_interval_seconds": 0.1,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def start_server(
    settings: Settings, embedder: SentenceTransformerEmbedder, **kwargs: object
) -> RetrieverServer:
    async def load() -> SentenceTransformerEmbedder:
        return embedder

    server = RetrieverServer(settings, load_embedder=kwargs.pop("load", load), **kwargs)  # type: ignore[arg-type]
    await server.start()
    return server


def doc(
    document_id: str, text: str, content_type: str = "text/markdown", **metadata: str
) -> retriever_pb2.Document:
    return retriever_pb2.Document(
        document_id=document_id,
        source=f"kb/{document_id}.md",
        content_type=content_type,
        text=text,
        metadata=metadata,
    )


async def ingest(
    stub: retriever_pb2_grpc.RetrieverStub,
    tenant: str,
    documents: list[retriever_pb2.Document],
    collection: str = "",
) -> retriever_pb2.IngestSummary:
    async def requests() -> AsyncIterator[retriever_pb2.IngestRequest]:
        yield retriever_pb2.IngestRequest(principal=principal(tenant), collection=collection)
        for d in documents:
            yield retriever_pb2.IngestRequest(document=d)

    return await stub.Ingest(requests())


async def search(
    stub: retriever_pb2_grpc.RetrieverStub,
    tenant: str,
    query: str,
    k: int = 5,
    collection: str = "",
    **filters: str,
) -> list[retriever_pb2.Passage]:
    reply = await stub.Search(
        retriever_pb2.SearchRequest(
            principal=principal(tenant), query=query, k=k, collection=collection, filter=filters
        )
    )
    return list(reply.passages)
