"""Ingest pipeline: validate, chunk, skip unchanged, embed in batches, write, drop stale chunks."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from cai_retriever.chunking import (
    SUPPORTED_CONTENT_TYPES,
    Chunker,
    chunk_id,
    content_hash,
    guess_content_type,
)
from cai_retriever.embeddings import Embedder
from cai_retriever.errors import InvalidArgument, Unavailable
from cai_retriever.metrics import INGEST_CHUNKS, INGEST_DOCUMENTS
from cai_retriever.models import Chunk, Document, DocumentResult
from cai_retriever.store import StoredChunk, VectorStore

log = logging.getLogger(__name__)

METADATA_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_DOCUMENT_ID_CHARS = 1024
MAX_METADATA_VALUE_CHARS = 2048
# Points per Qdrant upsert request.
UPSERT_BATCH = 256


def validate_metadata_key(key: str) -> None:
    """Metadata keys are plain identifiers (they become payload paths and filter keys)."""
    if not METADATA_KEY.match(key):
        raise InvalidArgument(
            f"metadata key {key!r} is invalid: use 1-64 letters, digits, '_' or '-'"
        )


def normalise(document: Document, max_bytes: int) -> Document:
    """Check a document and fill in its id and content type.

    Raises:
        InvalidArgument: with a message for the summary's error list.
    """
    document_id = document.document_id or document.source
    if not document_id:
        raise InvalidArgument("document has neither a document_id nor a source")
    if len(document_id) > MAX_DOCUMENT_ID_CHARS:
        raise InvalidArgument(f"document_id is longer than {MAX_DOCUMENT_ID_CHARS} characters")
    if not document.text.strip():
        raise InvalidArgument("document text is empty")
    size = len(document.text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidArgument(
            f"document is {size} bytes, over the limit of {max_bytes} bytes "
            "(MAX_DOCUMENT_BYTES); split it into several documents"
        )
    content_type = guess_content_type(document.source, document.content_type)
    if content_type not in SUPPORTED_CONTENT_TYPES:
        raise InvalidArgument(
            f"content type {content_type!r} is not supported "
            f"(use one of {', '.join(SUPPORTED_CONTENT_TYPES)})"
        )
    for key, value in document.metadata.items():
        validate_metadata_key(key)
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise InvalidArgument(f"metadata value of {key!r} is too long")
    return replace(document, document_id=document_id, content_type=content_type)


@dataclass
class _Pending:
    document: Document
    title: str
    chunks: list[Chunk]
    point_ids: list[str]
    digest: str
    has_stale_tail: bool


class Ingestor:
    """Runs one tenant's stream of documents into one collection.

    Documents are chunked as they arrive; chunks of several small documents are embedded together
    (`batch_chunks` at a time) so throughput does not depend on document size. Each document's
    result is yielded once its chunks are written.
    """

    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        chunker: Chunker,
        max_document_bytes: int,
        batch_chunks: int = 64,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.chunker = chunker
        self.max_document_bytes = max_document_bytes
        self.batch_chunks = batch_chunks

    async def run(
        self, tenant_id: str, collection: str, documents: AsyncIterable[Document]
    ) -> AsyncIterator[DocumentResult]:
        """Ingest every document of the stream; yields one result per document.

        Raises:
            Unavailable: Qdrant did not answer when the collection was opened.
            FailedPrecondition: the collection holds vectors of another size.
        """
        await self.store.ensure_collection(collection, self.embedder.dimension)
        pending: list[_Pending] = []
        pending_chunks = 0
        async for document in documents:
            result_or_pending = await self._prepare(tenant_id, collection, document)
            if isinstance(result_or_pending, DocumentResult):
                yield self._count(result_or_pending)
                continue
            pending.append(result_or_pending)
            pending_chunks += len(result_or_pending.chunks)
            if pending_chunks >= self.batch_chunks:
                for result in await self._flush(tenant_id, collection, pending):
                    yield self._count(result)
                pending, pending_chunks = [], 0
        for result in await self._flush(tenant_id, collection, pending):
            yield self._count(result)

    @staticmethod
    def _count(result: DocumentResult) -> DocumentResult:
        INGEST_DOCUMENTS.labels(outcome=result.outcome).inc()
        if result.outcome == "indexed":
            INGEST_CHUNKS.inc(result.chunks)
        else:
            log.info(
                "document not indexed",
                extra={
                    "document_id": result.document_id,
                    "outcome": result.outcome,
                    "reason": result.message,
                },
            )
        return result

    async def _prepare(
        self, tenant_id: str, collection: str, document: Document
    ) -> DocumentResult | _Pending:
        try:
            document = normalise(document, self.max_document_bytes)
        except InvalidArgument as exc:
            return DocumentResult(
                document.document_id or document.source, document.source, "failed", 0, str(exc)
            )
        title, chunks = await asyncio.to_thread(self.chunker.split, document)
        if not chunks:
            return DocumentResult(
                document.document_id, document.source, "failed", 0, "document has no text to index"
            )
        digest = content_hash(document, self.chunker.params, self.embedder.model_name)
        ids = [chunk_id(tenant_id, collection, document.document_id, c.index) for c in chunks]
        tail_id = chunk_id(tenant_id, collection, document.document_id, len(chunks))
        try:
            stored = await self.store.retrieve_payloads(collection, [ids[0], ids[-1], tail_id])
        except Unavailable as exc:
            return DocumentResult(document.document_id, document.source, "failed", 0, str(exc))
        unchanged = all(
            stored.get(point_id, {}).get("content_hash") == digest for point_id in (ids[0], ids[-1])
        )
        has_stale_tail = tail_id in stored
        if unchanged and not has_stale_tail:
            return DocumentResult(
                document.document_id, document.source, "skipped", len(chunks), "unchanged"
            )
        return _Pending(document, title, chunks, ids, digest, has_stale_tail)

    async def _flush(
        self, tenant_id: str, collection: str, pending: list[_Pending]
    ) -> list[DocumentResult]:
        if not pending:
            return []
        texts = [c.embedding_text(p.title) for p in pending for c in p.chunks]
        try:
            vectors = await self.embedder.embed_documents(texts)
            now = datetime.now(UTC).isoformat(timespec="seconds")
            points = []
            offsets = iter(vectors)
            for item in pending:
                for chunk, point_id in zip(item.chunks, item.point_ids, strict=True):
                    points.append(
                        StoredChunk(
                            point_id, next(offsets), self._payload(tenant_id, item, chunk, now)
                        )
                    )
            for start in range(0, len(points), UPSERT_BATCH):
                await self.store.upsert(collection, points[start : start + UPSERT_BATCH])
        except Unavailable as exc:
            return [
                DocumentResult(p.document.document_id, p.document.source, "failed", 0, str(exc))
                for p in pending
            ]
        results = []
        for item in pending:
            document = item.document
            try:
                if item.has_stale_tail:
                    await self.store.delete_tail(
                        collection, tenant_id, document.document_id, len(item.chunks)
                    )
            except Unavailable as exc:
                results.append(
                    DocumentResult(
                        document.document_id,
                        document.source,
                        "failed",
                        0,
                        f"new chunks written but stale ones not removed: {exc}",
                    )
                )
                continue
            results.append(
                DocumentResult(document.document_id, document.source, "indexed", len(item.chunks))
            )
        return results

    def _payload(self, tenant_id: str, item: _Pending, chunk: Chunk, now: str) -> dict[str, object]:
        document = item.document
        return {
            "tenant_id": tenant_id,
            "document_id": document.document_id,
            "chunk_index": chunk.index,
            "chunk_count": len(item.chunks),
            "text": chunk.text,
            "section": chunk.section,
            "title": item.title,
            "source": document.source,
            "content_type": document.content_type,
            "metadata": dict(document.metadata),
            "content_hash": item.digest,
            "embedding_model": self.embedder.model_name,
            "ingested_at": now,
        }
