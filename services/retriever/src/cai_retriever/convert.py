"""Protobuf ↔ domain objects. Nothing past this module sees `*_pb2` types."""

from __future__ import annotations

from cai.v1 import retriever_pb2
from cai_retriever.models import CollectionStats, Document, DocumentResult, IngestReport, Passage


def document_from_pb(message: retriever_pb2.Document) -> Document:
    """A domain document from its message."""
    return Document(
        document_id=message.document_id,
        title=message.title,
        source=message.source,
        content_type=message.content_type,
        text=message.text,
        metadata=dict(message.metadata),
    )


def passage_to_pb(passage: Passage) -> retriever_pb2.Passage:
    """A passage message."""
    return retriever_pb2.Passage(
        text=passage.text,
        score=passage.score,
        document_id=passage.document_id,
        chunk_id=passage.chunk_id,
        title=passage.title,
        source=passage.source,
        metadata=passage.metadata,
    )


def search_reply_to_pb(passages: list[Passage]) -> retriever_pb2.SearchReply:
    """A search reply."""
    return retriever_pb2.SearchReply(passages=[passage_to_pb(p) for p in passages])


def summary_to_pb(report: IngestReport) -> retriever_pb2.IngestSummary:
    """An ingest summary with one error entry per failed document."""
    return retriever_pb2.IngestSummary(
        documents=report.documents,
        chunks=report.chunks,
        skipped=report.skipped,
        errors=[
            retriever_pb2.DocumentError(
                document_id=e.document_id, source=e.source, message=e.message
            )
            for e in report.errors
        ],
    )


def progress_to_pb(result: DocumentResult) -> retriever_pb2.IngestProgress:
    """A progress event for one document."""
    return retriever_pb2.IngestProgress(
        document=retriever_pb2.DocumentProgress(
            document_id=result.document_id,
            source=result.source,
            outcome=result.outcome,
            chunks=result.chunks,
            message=result.message,
        )
    )


def stats_to_pb(stats: CollectionStats) -> retriever_pb2.StatsReply:
    """A stats reply."""
    return retriever_pb2.StatsReply(
        collection=stats.collection,
        chunks=stats.chunks,
        documents=stats.documents,
        vector_size=stats.vector_size,
        embedding_model=stats.embedding_model,
    )
