"""The knowledge base: validated, tenant-scoped search, ingest, delete and stats."""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterable, AsyncIterator

from cai_retriever.chunking import Chunker
from cai_retriever.config import Settings
from cai_retriever.embeddings import Embedder
from cai_retriever.errors import InvalidArgument, NotFound
from cai_retriever.ingest import Ingestor, validate_metadata_key
from cai_retriever.metrics import RETRIEVAL_DURATION, RETRIEVAL_RESULTS
from cai_retriever.models import CollectionStats, Document, DocumentResult, Passage, SearchQuery
from cai_retriever.store import VectorStore, tenant_filter

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
MAX_TENANT_CHARS = 256
MAX_DELETE_IDS = 10_000


def require_tenant(tenant_id: str) -> str:
    """The caller's tenant; it is never empty (the gateway always sets one)."""
    if not tenant_id:
        raise InvalidArgument("principal.tenant_id is required")
    if len(tenant_id) > MAX_TENANT_CHARS:
        raise InvalidArgument(f"principal.tenant_id is longer than {MAX_TENANT_CHARS} characters")
    return tenant_id


class KnowledgeBase:
    """Tenant-scoped retrieval over one vector store with one embedding model.

    Args:
        settings: Limits and defaults (k, chunking, document size, default collection).
        store: The vector store.
        embedder: The embedding model; its dimension sizes new collections.
    """

    def __init__(self, settings: Settings, store: VectorStore, embedder: Embedder) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.chunker = Chunker(settings.chunk_size_tokens, settings.chunk_overlap_tokens)
        self.ingestor = Ingestor(
            store,
            embedder,
            self.chunker,
            settings.max_document_bytes,
            settings.ingest_batch_chunks,
        )

    def collection(self, name: str) -> str:
        """The collection a request means: its name, or the default when empty."""
        name = name or self.settings.default_collection
        if not COLLECTION_NAME.match(name):
            raise InvalidArgument(
                f"collection name {name!r} is invalid: use 1-63 letters, digits, '_' or '-', "
                "starting with a letter or digit"
            )
        return name

    def search_query(
        self,
        tenant_id: str,
        collection: str,
        query: str,
        k: int,
        filters: dict[str, str],
        score_threshold: float,
    ) -> SearchQuery:
        """Validate a search request and apply defaults."""
        tenant_id = require_tenant(tenant_id)
        if not query.strip():
            raise InvalidArgument("query is empty")
        if len(query) > self.settings.max_query_chars:
            raise InvalidArgument(
                f"query is {len(query)} characters, over the limit of "
                f"{self.settings.max_query_chars}"
            )
        k = k or self.settings.default_k
        if not 1 <= k <= self.settings.max_k:
            raise InvalidArgument(f"k must be between 1 and {self.settings.max_k}, got {k}")
        if math.isnan(score_threshold) or not -1.0 <= score_threshold <= 1.0:
            raise InvalidArgument("score_threshold must be between -1 and 1 (cosine similarity)")
        for key in filters:
            validate_metadata_key(key)
        return SearchQuery(
            tenant_id=tenant_id,
            collection=self.collection(collection),
            query=query,
            k=k,
            filter=dict(filters),
            score_threshold=score_threshold or None,
        )

    async def search(self, query: SearchQuery) -> list[Passage]:
        """The tenant's best passages for a query.

        Raises:
            NotFound: the collection does not exist.
        """
        started = time.perf_counter()
        await self.store.require(query.collection, self.embedder.dimension)
        vector = await self.embedder.embed_query(query.query)
        passages = await self.store.search(
            query.collection,
            vector,
            query.tenant_id,
            query.k,
            query.filter,
            query.score_threshold,
        )
        RETRIEVAL_DURATION.labels(operation="search").observe(time.perf_counter() - started)
        RETRIEVAL_RESULTS.observe(len(passages))
        return passages

    async def ingest(
        self, tenant_id: str, collection: str, documents: AsyncIterable[Document]
    ) -> AsyncIterator[DocumentResult]:
        """Ingest a stream of documents; yields each document's result."""
        tenant_id = require_tenant(tenant_id)
        name = self.collection(collection)
        started = time.perf_counter()
        try:
            async for result in self.ingestor.run(tenant_id, name, documents):
                yield result
        finally:
            RETRIEVAL_DURATION.labels(operation="ingest").observe(time.perf_counter() - started)

    async def delete_documents(
        self, tenant_id: str, collection: str, document_ids: list[str]
    ) -> int:
        """Delete the tenant's documents; returns the number of chunks deleted."""
        tenant_id = require_tenant(tenant_id)
        name = self.collection(collection)
        ids = [i for i in document_ids if i]
        if not ids:
            raise InvalidArgument("document_ids is empty")
        if len(ids) > MAX_DELETE_IDS:
            raise InvalidArgument(f"at most {MAX_DELETE_IDS} document_ids per request")
        if not await self.store.exists(name):
            raise NotFound(f"collection {name!r} does not exist")
        return await self.store.delete_documents(name, tenant_id, ids)

    async def list_collections(self, tenant_id: str) -> list[str]:
        """Collections in which the tenant has at least one chunk."""
        tenant_id = require_tenant(tenant_id)
        names = await self.store.list_collections()
        return [n for n in names if await self.store.tenant_has_points(n, tenant_id)]

    async def stats(self, tenant_id: str, collection: str) -> CollectionStats:
        """The tenant's chunk and document counts in a collection."""
        tenant_id = require_tenant(tenant_id)
        name = self.collection(collection)
        size = await self.store.vector_size(name)
        chunks = await self.store.count(name, tenant_filter(tenant_id))
        documents = await self.store.document_count(name, tenant_id)
        return CollectionStats(name, chunks, documents, size, self.embedder.model_name)
