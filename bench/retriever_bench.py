"""Retriever benchmark: ingest throughput and search latency at 1k and 10k chunks.

Starts an in-process retriever (real all-MiniLM-L6-v2, embedded Qdrant in a temporary folder)
and drives it through its gRPC API like the orchestrator and `cai ingest` do. Writes one JSON line
per corpus size to bench/results/retriever.jsonl.

    .venv/bin/python bench/retriever_bench.py [--sizes 1000,10000] [--queries 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from cai.v1 import common_pb2, retriever_pb2, retriever_pb2_grpc
from cai_retriever.config import Settings
from cai_retriever.server import RetrieverServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOPICS = [
    "streaming",
    "queue",
    "checkpoint",
    "tenant",
    "gateway",
    "orchestrator",
    "retriever",
    "qdrant",
    "redis",
    "helm",
    "metrics",
    "alerts",
    "tokens",
    "assistants",
    "tools",
    "leases",
]
WORDS = (
    "the a run thread client server event log stream resume cancel worker replica pod model "
    "token latency chunk vector search index payload filter batch embed document source title "
    "deploy chart secret value probe health signal drain grace timeout retry backoff heartbeat"
).split()
PRINCIPAL = common_pb2.Principal(tenant_id="bench", subject="bench")


def synthetic_document(rng: random.Random, number: int, paragraphs: int) -> retriever_pb2.Document:
    """A Markdown document of `paragraphs` sections of about 150 words each."""
    topic = TOPICS[number % len(TOPICS)]
    parts = [f"# {topic.title()} notes {number}"]
    for p in range(paragraphs):
        sentence_words = [rng.choice(WORDS) for _ in range(150)]
        sentence_words[::12] = [topic] * len(sentence_words[::12])
        parts.append(f"## Part {p}\n\n" + " ".join(sentence_words) + ".")
    return retriever_pb2.Document(
        document_id=f"doc-{number}",
        source=f"bench/doc-{number}.md",
        content_type="text/markdown",
        text="\n\n".join(parts),
        metadata={"topic": topic},
    )


async def ingest(
    stub: retriever_pb2_grpc.RetrieverStub, documents: list[retriever_pb2.Document]
) -> retriever_pb2.IngestSummary:
    async def requests() -> AsyncIterator[retriever_pb2.IngestRequest]:
        yield retriever_pb2.IngestRequest(principal=PRINCIPAL, collection="bench")
        for document in documents:
            yield retriever_pb2.IngestRequest(document=document)

    return await stub.Ingest(requests())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def search_latencies(
    stub: retriever_pb2_grpc.RetrieverStub, rng: random.Random, n: int, with_filter: bool
) -> list[float]:
    latencies = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        query = f"how does the {topic} {rng.choice(WORDS)} {rng.choice(WORDS)} work"
        request = retriever_pb2.SearchRequest(
            principal=PRINCIPAL,
            collection="bench",
            query=query,
            k=5,
            filter={"topic": topic} if with_filter else {},
        )
        started = time.perf_counter()
        reply = await stub.Search(request)
        latencies.append(time.perf_counter() - started)
        assert reply.passages, "a search returned nothing"
    return latencies


async def concurrent_qps(
    stub: retriever_pb2_grpc.RetrieverStub, rng: random.Random, n: int, concurrency: int
) -> float:
    queries = [f"{rng.choice(TOPICS)} {rng.choice(WORDS)} {rng.choice(WORDS)}" for _ in range(n)]
    semaphore = asyncio.Semaphore(concurrency)

    async def one(query: str) -> None:
        async with semaphore:
            await stub.Search(
                retriever_pb2.SearchRequest(principal=PRINCIPAL, collection="bench", query=query)
            )

    started = time.perf_counter()
    await asyncio.gather(*(one(q) for q in queries))
    return n / (time.perf_counter() - started)


async def run(sizes: list[int], queries: int, out: Path) -> None:
    rng = random.Random(42)
    with tempfile.TemporaryDirectory(prefix="retriever-bench-") as tmp:
        settings = Settings(
            grpc_host="127.0.0.1", grpc_port=0, metrics_port=0, qdrant_path=f"{tmp}/qdrant"
        )
        server = RetrieverServer(settings)
        started = time.perf_counter()
        await server.start()
        await server.ready.wait()
        load_s = time.perf_counter() - started
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = retriever_pb2_grpc.RetrieverStub(channel)
            total_chunks, number = 0, 0
            for size in sizes:
                documents = []
                ingest_started = time.perf_counter()
                added = 0
                while total_chunks + added < size:
                    batch = [synthetic_document(rng, number + i, 8) for i in range(25)]
                    number += len(batch)
                    summary = await ingest(stub, batch)
                    assert not summary.errors, summary.errors
                    added += summary.chunks
                    documents.extend(batch)
                ingest_s = time.perf_counter() - ingest_started
                total_chunks += added
                await search_latencies(stub, rng, 10, False)  # warm-up
                plain = await search_latencies(stub, rng, queries, False)
                filtered = await search_latencies(stub, rng, queries // 2, True)
                qps = await concurrent_qps(stub, rng, queries, 8)
                # Split a search's time: the query embedding alone, in-process.
                assert server.embedder is not None
                embed_times = []
                for _ in range(min(queries, 50)):
                    started = time.perf_counter()
                    await server.embedder.embed_query(f"{rng.choice(TOPICS)} {rng.choice(WORDS)}")
                    embed_times.append(time.perf_counter() - started)
                stats = await stub.Stats(
                    retriever_pb2.StatsRequest(principal=PRINCIPAL, collection="bench")
                )
                row = {
                    "bench": "retriever",
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "chunks": stats.chunks,
                    "documents": stats.documents,
                    "chunks_ingested": added,
                    "ingest_seconds": round(ingest_s, 2),
                    "ingest_chunks_per_s": round(added / ingest_s, 1),
                    "search_p50_ms": round(statistics.median(plain) * 1000, 1),
                    "search_p95_ms": round(percentile(plain, 0.95) * 1000, 1),
                    "filtered_search_p50_ms": round(statistics.median(filtered) * 1000, 1),
                    "filtered_search_p95_ms": round(percentile(filtered, 0.95) * 1000, 1),
                    "search_qps_concurrency_8": round(qps, 1),
                    "query_embed_p50_ms": round(statistics.median(embed_times) * 1000, 1),
                    "load_average_1m": round(os.getloadavg()[0], 2),
                    "queries": queries,
                    "model": stats.embedding_model,
                    "store": "qdrant-local",
                    "chunk_size_tokens": settings.chunk_size_tokens,
                    "model_load_seconds": round(load_s, 1),
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                }
                line = json.dumps(row)
                print(line, flush=True)
                with out.open("a") as f:
                    f.write(line + "\n")
        await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="corpus sizes in chunks")
    parser.add_argument("--queries", type=int, default=200, help="searches per measurement")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "retriever.jsonl"
    )
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    asyncio.run(run(sizes, args.queries, args.out))


if __name__ == "__main__":
    main()
