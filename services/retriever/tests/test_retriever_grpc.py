"""Integration: a real grpc.aio retriever, the real model and an embedded Qdrant."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from retriever_support import (
    TEST_MAX_DOCUMENT_BYTES,
    doc,
    ingest,
    make_settings,
    principal,
    search,
    start_server,
)

from cai.v1 import retriever_pb2, retriever_pb2_grpc
from cai_retriever.embeddings import SentenceTransformerEmbedder
from cai_retriever.server import RetrieverServer
from cai_retriever.store import VectorStore

RESUME = (
    "# Streaming\n\n## Resuming a stream\n\n"
    "A client that loses its connection reconnects and sends the Last-Event-ID header. "
    "The gateway replays the run's event log from that id, so no token is lost or repeated."
)
QUEUE = (
    "# Queue\n\n## Workers\n\n"
    "Runs are queued in a Redis stream. Workers take jobs with XREADGROUP and hold a lease "
    "that a heartbeat renews; a dead worker's job is reclaimed with XAUTOCLAIM."
)
HELM = (
    "# Deploying\n\nInstall the chart with helm install. Values choose an in-chart Redis and "
    "Qdrant or external ones, and secrets come from existing Kubernetes Secrets."
)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_ingest_then_search_finds_the_right_document(stub, tenant) -> None:
    chunks_before = metric("cai_ingest_chunks_total")
    searches_before = metric("cai_retrieval_duration_seconds_count", operation="search")
    summary = await ingest(
        stub, tenant, [doc("resume", RESUME), doc("queue", QUEUE), doc("helm", HELM)]
    )
    assert (summary.documents, summary.skipped, list(summary.errors)) == (3, 0, [])
    assert summary.chunks >= 3
    assert metric("cai_ingest_chunks_total") - chunks_before == summary.chunks

    passages = await search(stub, tenant, "How does a client resume a dropped stream?", k=3)
    assert passages[0].document_id == "resume"
    top = passages[0]
    assert "Last-Event-ID" in top.text
    assert top.source == "kb/resume.md" and top.title == "Streaming"
    assert top.metadata["section"] == "Streaming > Resuming a stream"
    assert top.chunk_id and 0 < top.score <= 1.0
    assert [p.score for p in passages] == sorted((p.score for p in passages), reverse=True)
    assert (await search(stub, tenant, "helm chart secrets", k=1))[0].document_id == "helm"
    assert metric("cai_retrieval_duration_seconds_count", operation="search") - searches_before == 2


async def test_score_threshold_and_k(stub, tenant) -> None:
    await ingest(stub, tenant, [doc("resume", RESUME), doc("queue", QUEUE), doc("helm", HELM)])
    assert len(await search(stub, tenant, "redis workers lease", k=2)) == 2
    reply = await stub.Search(
        retriever_pb2.SearchRequest(
            principal=principal(tenant), query="redis workers lease", k=10, score_threshold=0.99
        )
    )
    assert list(reply.passages) == []
    default_k = await stub.Search(
        retriever_pb2.SearchRequest(principal=principal(tenant), query="redis", k=0)
    )
    assert len(default_k.passages) == 3  # default k is 5, the tenant has 3 chunks


async def test_reingest_unchanged_is_skipped_and_changed_replaces(stub, tenant) -> None:
    long_text = "# Long\n\n" + "\n\n".join(
        f"Paragraph {i}: the retriever splits long documents into chunks. " * 6 for i in range(12)
    )
    first = await ingest(stub, tenant, [doc("long", long_text)])
    assert first.documents == 1 and first.chunks > 3
    stats = await stub.Stats(retriever_pb2.StatsRequest(principal=principal(tenant)))
    assert (stats.documents, stats.chunks) == (1, first.chunks)

    again = await ingest(stub, tenant, [doc("long", long_text)])
    assert (again.documents, again.skipped, again.chunks) == (0, 1, 0)

    short = "# Long\n\nNow the document is a single short paragraph about pelicans."
    replaced = await ingest(stub, tenant, [doc("long", short)])
    assert (replaced.documents, replaced.chunks) == (1, 1)
    stats = await stub.Stats(retriever_pb2.StatsRequest(principal=principal(tenant)))
    assert (stats.documents, stats.chunks) == (1, 1), "a shorter version must leave no stale chunks"
    passages = await search(stub, tenant, "retriever splits long documents", k=5)
    assert [p.text for p in passages] == [short]


async def test_delete_documents(stub, tenant) -> None:
    await ingest(stub, tenant, [doc("resume", RESUME), doc("queue", QUEUE)])
    reply = await stub.DeleteDocuments(
        retriever_pb2.DeleteDocumentsRequest(
            principal=principal(tenant), document_ids=["resume", "nope"]
        )
    )
    assert reply.deleted_chunks == 1
    passages = await search(stub, tenant, "resume a stream Last-Event-ID", k=5)
    assert {p.document_id for p in passages} == {"queue"}
    again = await stub.DeleteDocuments(
        retriever_pb2.DeleteDocumentsRequest(principal=principal(tenant), document_ids=["resume"])
    )
    assert again.deleted_chunks == 0


async def test_stats_and_list_collections(stub, tenant) -> None:
    await ingest(stub, tenant, [doc("resume", RESUME)], collection="manuals")
    await ingest(stub, tenant, [doc("queue", QUEUE), doc("helm", HELM)], collection="runbooks")
    listed = await stub.ListCollections(
        retriever_pb2.ListCollectionsRequest(principal=principal(tenant))
    )
    assert list(listed.collections) == ["manuals", "runbooks"]
    stats = await stub.Stats(
        retriever_pb2.StatsRequest(principal=principal(tenant), collection="runbooks")
    )
    assert stats.collection == "runbooks"
    assert (stats.documents, stats.chunks) == (2, 2)
    assert stats.vector_size == 384 and stats.embedding_model == "all-MiniLM-L6-v2"
    other = await stub.ListCollections(
        retriever_pb2.ListCollectionsRequest(principal=principal(tenant + "-other"))
    )
    assert "manuals" not in other.collections


async def test_tenant_isolation(stub, tenant) -> None:
    other = tenant + "-b"
    await ingest(stub, tenant, [doc("secret", "# Payroll\n\nThe CEO salary is 1 234 567 euros.")])
    await ingest(stub, other, [doc("public", "# Menu\n\nThe canteen serves soup on Fridays.")])

    seen = await search(stub, other, "CEO salary euros", k=10)
    assert {p.document_id for p in seen} == {"public"}
    # Filters only narrow the tenant's own points: naming A's document or tenant finds nothing.
    assert await search(stub, other, "CEO salary", k=10, document_id="secret") == []
    assert await search(stub, other, "CEO salary", k=10, tenant_id=tenant) == []
    assert await search(stub, other, "CEO salary", k=10, source="kb/secret.md") == []
    # B cannot delete A's document, and B's stats do not count A's.
    deleted = await stub.DeleteDocuments(
        retriever_pb2.DeleteDocumentsRequest(principal=principal(other), document_ids=["secret"])
    )
    assert deleted.deleted_chunks == 0
    stats = await stub.Stats(retriever_pb2.StatsRequest(principal=principal(other)))
    assert (stats.documents, stats.chunks) == (1, 1)
    # The same document id in two tenants are two documents.
    await ingest(stub, other, [doc("secret", "# Other\n\nB's own secret is about gardening.")])
    mine = await search(stub, tenant, "salary", k=10)
    assert [p.text for p in mine] == ["# Payroll\n\nThe CEO salary is 1 234 567 euros."]


async def test_metadata_filter(stub, tenant) -> None:
    await ingest(
        stub,
        tenant,
        [
            doc("resume-en", RESUME, lang="en"),
            doc("resume-fr", RESUME.replace("client", "le client"), lang="fr"),
        ],
    )
    passages = await search(stub, tenant, "resume a stream", k=5, lang="fr")
    assert [p.document_id for p in passages] == ["resume-fr"]
    assert passages[0].metadata["lang"] == "fr"
    assert await search(stub, tenant, "resume a stream", k=5, lang="de") == []


async def test_ingest_reports_bad_documents_without_failing_the_batch(stub, tenant) -> None:
    oversized = "word " * (TEST_MAX_DOCUMENT_BYTES // 5 + 1)
    failed_before = metric("cai_ingest_documents_total", outcome="failed")
    summary = await ingest(
        stub,
        tenant,
        [
            doc("empty", "   "),
            doc("big", oversized),
            doc("good", QUEUE),
            retriever_pb2.Document(text="no id and no source"),
            doc("pdf", "%PDF-1.7", content_type="application/pdf"),
        ],
    )
    assert (summary.documents, summary.chunks) == (1, 1)
    errors = {e.document_id: e.message for e in summary.errors}
    assert set(errors) == {"empty", "big", "", "pdf"}
    assert errors["empty"] == "document text is empty"
    assert "over the limit of" in errors["big"] and "MAX_DOCUMENT_BYTES" in errors["big"]
    assert "neither a document_id nor a source" in errors[""]
    assert "not supported" in errors["pdf"]
    assert metric("cai_ingest_documents_total", outcome="failed") - failed_before == 4
    assert [p.document_id for p in await search(stub, tenant, "workers", k=5)] == ["good"]


async def test_ingest_with_progress_streams_each_document(stub, tenant) -> None:
    async def requests():
        yield retriever_pb2.IngestRequest(
            principal=principal(tenant), collection="progress", document=doc("resume", RESUME)
        )
        yield retriever_pb2.IngestRequest(document=doc("empty", ""))
        yield retriever_pb2.IngestRequest(document=doc("queue", QUEUE))

    events = [e async for e in stub.IngestWithProgress(requests())]
    assert [e.WhichOneof("event") for e in events] == ["document"] * 3 + ["summary"]
    outcomes = {e.document.document_id: e.document.outcome for e in events[:3]}
    assert outcomes == {"resume": "indexed", "empty": "failed", "queue": "indexed"}
    assert events[-1].summary.documents == 2 and len(events[-1].summary.errors) == 1


@pytest.mark.parametrize(
    ("request_fields", "code", "message"),
    [
        ({"query": ""}, grpc.StatusCode.INVALID_ARGUMENT, "query is empty"),
        ({"query": "   "}, grpc.StatusCode.INVALID_ARGUMENT, "query is empty"),
        ({"k": -1}, grpc.StatusCode.INVALID_ARGUMENT, "k must be between 1 and 50, got -1"),
        ({"k": 51}, grpc.StatusCode.INVALID_ARGUMENT, "k must be between 1 and 50, got 51"),
        ({"collection": "nope"}, grpc.StatusCode.NOT_FOUND, "collection 'nope' does not exist"),
        ({"collection": "../x"}, grpc.StatusCode.INVALID_ARGUMENT, "collection name '../x'"),
        ({"score_threshold": 2.0}, grpc.StatusCode.INVALID_ARGUMENT, "score_threshold"),
        ({"filter": {"a.b": "c"}}, grpc.StatusCode.INVALID_ARGUMENT, "metadata key 'a.b'"),
        ({"tenant": ""}, grpc.StatusCode.INVALID_ARGUMENT, "principal.tenant_id is required"),
        ({"query": "x" * 5000}, grpc.StatusCode.INVALID_ARGUMENT, "over the limit of 4096"),
    ],
)
async def test_search_rejects_bad_requests(stub, tenant, request_fields, code, message) -> None:
    await ingest(stub, tenant, [doc("queue", QUEUE)])
    fields = {"query": "workers", "k": 3, **request_fields}
    who = principal(fields.pop("tenant", tenant))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Search(retriever_pb2.SearchRequest(principal=who, **fields))
    assert err.value.code() == code
    assert message in err.value.details()
    assert "Traceback" not in err.value.details()


async def test_other_rpcs_reject_bad_requests(stub, tenant) -> None:
    async def expect(call, code: grpc.StatusCode, message: str) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == code and message in err.value.details()

    p = principal(tenant)
    await expect(
        stub.Stats(retriever_pb2.StatsRequest(principal=p, collection="missing")),
        grpc.StatusCode.NOT_FOUND,
        "collection 'missing' does not exist",
    )
    await expect(
        stub.DeleteDocuments(
            retriever_pb2.DeleteDocumentsRequest(
                principal=p, collection="missing", document_ids=["a"]
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "does not exist",
    )
    await expect(
        stub.DeleteDocuments(retriever_pb2.DeleteDocumentsRequest(principal=p)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "document_ids is empty",
    )
    await expect(
        stub.ListCollections(retriever_pb2.ListCollectionsRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "principal.tenant_id is required",
    )
    await expect(
        ingest(stub, "", [doc("a", "text")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "principal.tenant_id is required",
    )
    await expect(
        ingest(stub, tenant, [doc("a", "text")], collection="bad name"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "collection name 'bad name' is invalid",
    )


async def wait_health(stub: health_pb2_grpc.HealthStub, want: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = (await stub.Check(health_pb2.HealthCheckRequest(service=""))).status
        if status == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"health stayed {status}, wanted {want}")


class FlakyStore(VectorStore):
    """A local store whose ping can be made to fail, standing in for a Qdrant that stops."""

    down = False

    async def ping(self) -> bool:
        return False if self.down else await super().ping()


async def test_health_follows_model_loading_and_qdrant(
    embedder: SentenceTransformerEmbedder, tmp_path
) -> None:
    settings = make_settings(tmp_path)
    gate = asyncio.Event()

    async def slow_load() -> SentenceTransformerEmbedder:
        await gate.wait()
        return embedder

    store = FlakyStore(path=settings.qdrant_path)
    srv: RetrieverServer = await start_server(settings, embedder, load=slow_load, store=store)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            retriever = retriever_pb2_grpc.RetrieverStub(channel)
            for service in ("", "cai.v1.Retriever"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await retriever.Search(
                    retriever_pb2.SearchRequest(principal=principal("t"), query="q")
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "starting" in err.value.details()

            gate.set()
            await wait_health(health, health_pb2.HealthCheckResponse.SERVING)
            store.down = True
            await wait_health(health, health_pb2.HealthCheckResponse.NOT_SERVING)
            store.down = False
            await wait_health(health, health_pb2.HealthCheckResponse.SERVING)
    finally:
        await srv.stop(0)


async def test_store_ping_is_false_when_qdrant_server_is_unreachable(unused_tcp_port) -> None:
    store = VectorStore(url=f"http://127.0.0.1:{unused_tcp_port}", timeout=1)
    try:
        assert await store.ping() is False
    finally:
        await store.close()


async def test_collection_of_another_vector_size_is_refused(server, stub, tenant) -> None:
    await server.store.ensure_collection("other-model", 8)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await search(stub, tenant, "anything", collection="other-model")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "holds 8-dimensional vectors" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest(stub, tenant, [doc("a", QUEUE)], collection="other-model")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_second_process_on_the_same_local_store_fails_loudly(server, embedder) -> None:
    settings = server.settings.model_copy(update={"grpc_port": 0})
    second = await start_server(settings, embedder)
    try:
        await asyncio.wait_for(second.grpc.stopping.wait(), timeout=30)
        assert second.failure is not None
        assert "already accessed by another instance" in str(second.failure)
        assert not second.ready.is_set()
    finally:
        await second.stop(0)
