"""The vector store: Qdrant collections shared by tenants, every point tagged with its tenant.

The connection itself (a Qdrant server, or Qdrant embedded in this process) is in `qdrant`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qdrant_client import models

from cai_retriever.errors import FailedPrecondition, NotFound
from cai_retriever.models import Passage
from cai_retriever.qdrant import QdrantConnection

log = logging.getLogger(__name__)

# Payload fields written by the retriever itself; everything else lives under "metadata".
TENANT = "tenant_id"
DOCUMENT = "document_id"
INDEX = "chunk_index"
TOP_LEVEL_FILTER_FIELDS = ("document_id", "source", "content_type", "title")


@dataclass(frozen=True)
class StoredChunk:
    """A chunk with its vector, ready to be written."""

    point_id: str
    vector: list[float]
    payload: dict[str, Any]


def tenant_filter(
    tenant_id: str,
    document_ids: Sequence[str] = (),
    extra: dict[str, str] | None = None,
    conditions: Sequence[models.Condition] = (),
) -> models.Filter:
    """A filter that always pins the tenant; other conditions can only narrow it.

    Args:
        tenant_id: The caller's tenant.
        document_ids: Restrict to these documents.
        extra: Exact-match conditions from a search request (metadata keys, or `document_id`,
            `source`, `content_type`, `title`).
        conditions: Further Qdrant conditions.
    """
    must: list[models.Condition] = [
        models.FieldCondition(key=TENANT, match=models.MatchValue(value=tenant_id))
    ]
    if document_ids:
        must.append(
            models.FieldCondition(key=DOCUMENT, match=models.MatchAny(any=list(document_ids)))
        )
    for key, value in (extra or {}).items():
        field = key if key in TOP_LEVEL_FILTER_FIELDS else f"metadata.{key}"
        must.append(models.FieldCondition(key=field, match=models.MatchValue(value=value)))
    must.extend(conditions)
    return models.Filter(must=must)


def payload_indexes(metadata_index_fields: Sequence[str]) -> list[tuple[str, Any]]:
    """The payload indexes of a collection: tenant (as Qdrant's tenant index), ids, filter keys."""
    keyword = models.PayloadSchemaType.KEYWORD
    return [
        (
            TENANT,
            models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
        ),
        (DOCUMENT, keyword),
        (INDEX, models.PayloadSchemaType.INTEGER),
        ("source", keyword),
        ("content_type", keyword),
        *((f"metadata.{key}", keyword) for key in metadata_index_fields),
    ]


def to_passage(point: models.ScoredPoint) -> Passage:
    """A search hit as a passage; `section` joins the metadata unless the metadata has one."""
    payload = point.payload or {}
    metadata = {str(k): str(v) for k, v in (payload.get("metadata") or {}).items()}
    if payload.get("section"):
        metadata.setdefault("section", str(payload["section"]))
    return Passage(
        text=str(payload.get("text", "")),
        score=float(point.score),
        document_id=str(payload.get(DOCUMENT, "")),
        chunk_id=str(point.id),
        title=str(payload.get("title", "")),
        source=str(payload.get("source", "")),
        metadata=metadata,
    )


class VectorStore(QdrantConnection):
    """Tenant-scoped operations over Qdrant collections.

    Args:
        url: Qdrant server URL; empty for embedded local mode.
        path: Folder of the embedded store (local mode only).
        api_key: Qdrant API key (server mode only).
        timeout: Seconds per Qdrant request (server mode only).
        metadata_index_fields: Metadata keys to index for filtering (server mode only).
    """

    def __init__(
        self,
        url: str = "",
        path: str = "data/qdrant",
        api_key: str | None = None,
        timeout: float = 10.0,
        metadata_index_fields: Sequence[str] = (),
    ) -> None:
        super().__init__(url, path, api_key, timeout)
        self._metadata_index_fields = list(metadata_index_fields)
        self._vector_sizes: dict[str, int] = {}
        self._create_lock = asyncio.Lock()

    async def list_collections(self) -> list[str]:
        """Names of all collections."""
        reply = await self._call("get_collections")
        return sorted(c.name for c in reply.collections)

    async def exists(self, collection: str) -> bool:
        """Whether the collection exists."""
        return bool(await self._call("collection_exists", collection_name=collection))

    async def vector_size(self, collection: str) -> int:
        """Vector size of an existing collection; `NotFound` if it does not exist."""
        if not await self.exists(collection):
            self._vector_sizes.pop(collection, None)
            raise NotFound(f"collection {collection!r} does not exist")
        if collection in self._vector_sizes:
            return self._vector_sizes[collection]
        info = await self._call("get_collection", collection_name=collection)
        vectors = info.config.params.vectors
        size = int(vectors.size if isinstance(vectors, models.VectorParams) else 0)
        self._vector_sizes[collection] = size
        return size

    async def require(self, collection: str, dimension: int) -> None:
        """Fail unless the collection exists with vectors of `dimension`."""
        size = await self.vector_size(collection)
        if size != dimension:
            raise FailedPrecondition(
                f"collection {collection!r} holds {size}-dimensional vectors but the embedding "
                f"model makes {dimension}-dimensional ones; use another collection"
            )

    async def ensure_collection(self, collection: str, dimension: int) -> None:
        """Create the collection (cosine distance, tenant-aware indexes) unless it exists."""
        async with self._create_lock:
            if not await self.exists(collection):
                await self._create(collection, dimension)
        await self.require(collection, dimension)

    async def _create(self, collection: str, dimension: int) -> None:
        await self._call(
            "create_collection",
            collection_name=collection,
            vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE),
            # Every search is filtered by tenant: build per-tenant HNSW graphs (payload_m) instead
            # of one global graph (m=0), as Qdrant recommends for multitenancy.
            hnsw_config=models.HnswConfigDiff(payload_m=16, m=0),
        )
        log.info("collection created", extra={"collection": collection, "dimension": dimension})
        if self.local:
            return  # local mode scans every point; payload indexes have no effect there
        for field, schema in payload_indexes(self._metadata_index_fields):
            await self._call(
                "create_payload_index",
                collection_name=collection,
                field_name=field,
                field_schema=schema,
                wait=True,
            )

    async def upsert(self, collection: str, chunks: Sequence[StoredChunk]) -> None:
        """Write chunks (replacing points with the same ids)."""
        if not chunks:
            return
        points = [
            models.PointStruct(id=c.point_id, vector=c.vector, payload=c.payload) for c in chunks
        ]
        await self._call("upsert", collection_name=collection, points=points, wait=True)

    async def retrieve_payloads(
        self, collection: str, point_ids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """Payloads of the points that exist among `point_ids`, by id."""
        records = await self._call(
            "retrieve",
            collection_name=collection,
            ids=list(point_ids),
            with_payload=True,
            with_vectors=False,
        )
        return {str(r.id): dict(r.payload or {}) for r in records}

    async def delete_tail(
        self, collection: str, tenant_id: str, document_id: str, keep: int
    ) -> None:
        """Delete a document's chunks numbered `keep` and above (left by a longer old version)."""
        selector = tenant_filter(
            tenant_id,
            [document_id],
            conditions=[models.FieldCondition(key=INDEX, range=models.Range(gte=keep))],
        )
        await self._call(
            "delete",
            collection_name=collection,
            points_selector=models.FilterSelector(filter=selector),
            wait=True,
        )

    async def count(self, collection: str, selector: models.Filter) -> int:
        """Exact number of points matching a filter."""
        reply = await self._call(
            "count", collection_name=collection, count_filter=selector, exact=True
        )
        return int(reply.count)

    async def delete_documents(
        self, collection: str, tenant_id: str, document_ids: Sequence[str]
    ) -> int:
        """Delete all chunks of the tenant's documents; returns how many chunks there were."""
        selector = tenant_filter(tenant_id, document_ids)
        found = await self.count(collection, selector)
        if found:
            await self._call(
                "delete",
                collection_name=collection,
                points_selector=models.FilterSelector(filter=selector),
                wait=True,
            )
        return found

    async def search(
        self,
        collection: str,
        vector: list[float],
        tenant_id: str,
        k: int,
        filters: dict[str, str],
        score_threshold: float | None,
    ) -> list[Passage]:
        """The `k` nearest chunks of the tenant, best first."""
        reply = await self._call(
            "query_points",
            collection_name=collection,
            query=vector,
            query_filter=tenant_filter(tenant_id, extra=filters),
            limit=k,
            score_threshold=score_threshold,
            with_payload=True,
        )
        return [to_passage(point) for point in reply.points]

    async def tenant_has_points(self, collection: str, tenant_id: str) -> bool:
        """Whether the tenant has at least one chunk in the collection."""
        reply = await self._call(
            "scroll",
            collection_name=collection,
            scroll_filter=tenant_filter(tenant_id),
            limit=1,
            with_payload=False,
            with_vectors=False,
        )
        return bool(reply[0])

    async def document_count(self, collection: str, tenant_id: str) -> int:
        """Number of the tenant's documents (each has exactly one chunk number 0)."""
        selector = tenant_filter(
            tenant_id,
            conditions=[models.FieldCondition(key=INDEX, match=models.MatchValue(value=0))],
        )
        return await self.count(collection, selector)
