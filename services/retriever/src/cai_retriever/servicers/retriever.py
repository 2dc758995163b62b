"""The cai.v1.Retriever gRPC servicer: validation errors become status codes, never tracebacks."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc

from cai.v1 import retriever_pb2, retriever_pb2_grpc
from cai_common.logging import bind, log_context
from cai_retriever import convert
from cai_retriever.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RetrieverError,
    Unavailable,
)
from cai_retriever.models import Document, DocumentResult, IngestReport
from cai_retriever.service import KnowledgeBase

log = logging.getLogger(__name__)

_CODES: dict[type[RetrieverError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


class _Abort(Exception):
    """Carries a status out of the error-mapping block to the `abort` call."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@asynccontextmanager
async def _status_errors(method: str, tenant_id: str) -> AsyncIterator[None]:
    token = log_context.set(dict(log_context.get() or {}))
    bind(tenant=tenant_id, rpc=method)
    try:
        yield
    except RetrieverError as exc:
        code = _CODES.get(type(exc), grpc.StatusCode.INTERNAL)
        log.info("request refused", extra={"code": code.name, "reason": str(exc)})
        raise _Abort(code, str(exc)) from exc
    except (grpc.aio.AbortError, _Abort):
        raise
    except Exception as exc:  # last resort: log the traceback here, send the client a status
        log.exception("unexpected error")
        raise _Abort(grpc.StatusCode.INTERNAL, f"internal error in {method}") from exc
    finally:
        log_context.reset(token)


R = TypeVar("R")


def _unary(
    handler: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]:
    """Run a unary handler under `_status_errors` and abort with the status it maps to."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            async with _status_errors(handler.__name__, request.principal.tenant_id):
                return await handler(self, request, context)
        except _Abort as abort:
            await context.abort(abort.code, abort.message)
        raise AssertionError("unreachable")

    return wrapper


class RetrieverServicer(retriever_pb2_grpc.RetrieverServicer):
    """Serves cai.v1.Retriever from a knowledge base that exists once the service is ready.

    Args:
        knowledge_base: Returns the knowledge base, or None while the model or store is loading.
    """

    def __init__(self, knowledge_base: Callable[[], KnowledgeBase | None]) -> None:
        self._knowledge_base = knowledge_base

    def _kb(self) -> KnowledgeBase:
        kb = self._knowledge_base()
        if kb is None:
            raise Unavailable("retriever is starting (loading the embedding model or store)")
        return kb

    @_unary
    async def Search(  # noqa: N802 - gRPC method name
        self, request: retriever_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> retriever_pb2.SearchReply:
        """Return the caller's tenant's best passages for a query."""
        kb = self._kb()
        query = kb.search_query(
            request.principal.tenant_id,
            request.collection,
            request.query,
            request.k,
            dict(request.filter),
            request.score_threshold,
        )
        passages = await kb.search(query)
        return convert.search_reply_to_pb(passages)

    async def Ingest(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterable[retriever_pb2.IngestRequest],
        context: grpc.aio.ServicerContext,
    ) -> retriever_pb2.IngestSummary:
        """Ingest a stream of documents and return the summary."""
        report = IngestReport()
        try:
            async for result in self._ingest(request_iterator, context):
                report.add(result)
        except _Abort as abort:
            await context.abort(abort.code, abort.message)
        return convert.summary_to_pb(report)

    async def IngestWithProgress(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterable[retriever_pb2.IngestRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[retriever_pb2.IngestProgress]:
        """Ingest a stream of documents, streaming each outcome and then the summary."""
        report = IngestReport()
        try:
            async for result in self._ingest(request_iterator, context):
                report.add(result)
                yield convert.progress_to_pb(result)
        except _Abort as abort:
            await context.abort(abort.code, abort.message)
        yield retriever_pb2.IngestProgress(summary=convert.summary_to_pb(report))

    async def _ingest(
        self,
        request_iterator: AsyncIterable[retriever_pb2.IngestRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[DocumentResult]:
        iterator = aiter(request_iterator)
        first = await anext(iterator, None)
        if first is None:
            return
        tenant_id = first.principal.tenant_id
        async with _status_errors("Ingest", tenant_id):
            kb = self._kb()

            async def documents() -> AsyncIterator[Document]:
                if first.HasField("document"):
                    yield convert.document_from_pb(first.document)
                async for message in iterator:
                    if message.HasField("document"):
                        yield convert.document_from_pb(message.document)

            async for result in kb.ingest(tenant_id, first.collection, documents()):
                yield result

    @_unary
    async def DeleteDocuments(  # noqa: N802 - gRPC method name
        self, request: retriever_pb2.DeleteDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> retriever_pb2.DeleteDocumentsReply:
        """Delete the caller's documents (all their chunks) from a collection."""
        deleted = await self._kb().delete_documents(
            request.principal.tenant_id, request.collection, list(request.document_ids)
        )
        return retriever_pb2.DeleteDocumentsReply(deleted_chunks=deleted)

    @_unary
    async def ListCollections(  # noqa: N802 - gRPC method name
        self, request: retriever_pb2.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> retriever_pb2.ListCollectionsReply:
        """List the collections in which the caller's tenant has documents."""
        names = await self._kb().list_collections(request.principal.tenant_id)
        return retriever_pb2.ListCollectionsReply(collections=names)

    @_unary
    async def Stats(  # noqa: N802 - gRPC method name
        self, request: retriever_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> retriever_pb2.StatsReply:
        """Return the caller's tenant's chunk and document counts in a collection."""
        stats = await self._kb().stats(request.principal.tenant_id, request.collection)
        return convert.stats_to_pb(stats)
