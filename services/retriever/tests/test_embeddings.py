"""The local model: normalised vectors, batching of documents and of concurrent queries."""

from __future__ import annotations

import asyncio
import math

from cai_retriever.config import Settings
from cai_retriever.embeddings import SentenceTransformerEmbedder


async def test_vectors_are_normalised_and_similar_texts_are_close(embedder) -> None:
    a, b, c = await embedder.embed_documents(
        ["How do I resume a stream?", "Resuming an interrupted stream", "Pelicans eat fish"]
    )
    assert len(a) == embedder.dimension == 384
    assert math.isclose(sum(x * x for x in a), 1.0, rel_tol=1e-4)

    def cosine(u: list[float], v: list[float]) -> float:
        return sum(x * y for x, y in zip(u, v, strict=True))

    assert cosine(a, b) > cosine(a, c) + 0.3
    assert await embedder.embed_documents([]) == []


async def test_documents_are_embedded_in_batches_and_queries_share_a_pass(
    embedder: SentenceTransformerEmbedder, monkeypatch
) -> None:
    calls: list[int] = []
    encode = embedder._encode

    def counting_encode(texts: list[str]) -> list[list[float]]:
        calls.append(len(texts))
        return encode(texts)

    monkeypatch.setattr(embedder, "_encode", counting_encode)
    monkeypatch.setattr(embedder, "batch_size", 4)
    vectors = await embedder.embed_documents([f"text {i}" for i in range(10)])
    assert len(vectors) == 10 and calls == [4, 4, 2]

    calls.clear()
    queries = [f"question {i}" for i in range(6)]
    results = await asyncio.gather(*(embedder.embed_query(q) for q in queries))
    assert len(calls) <= 3 and sum(calls) == 6  # not one pass per query
    single = await embedder.embed_query("question 3")
    assert max(abs(x - y) for x, y in zip(results[3], single, strict=True)) < 1e-5


def test_default_model_names() -> None:
    assert Settings().embeddings_model_name() == "all-MiniLM-L6-v2"
    assert Settings(embeddings_base_url="http://x/v1").embeddings_model_name() == (
        "text-embedding-3-small"
    )
    assert Settings(embeddings_model="m").embeddings_model_name() == "m"
