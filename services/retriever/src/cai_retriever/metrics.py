"""Prometheus metrics of the retriever (bounded labels only)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RETRIEVAL_DURATION = Histogram(
    "cai_retrieval_duration_seconds",
    "Time to serve a Search (embed + vector search) or a whole Ingest stream.",
    ["operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
RETRIEVAL_RESULTS = Histogram(
    "cai_retrieval_results",
    "Passages returned per Search.",
    buckets=(0, 1, 2, 3, 5, 8, 10, 20, 50),
)
INGEST_CHUNKS = Counter("cai_ingest_chunks_total", "Chunks embedded and written by Ingest.")
INGEST_DOCUMENTS = Counter(
    "cai_ingest_documents_total",
    "Documents processed by Ingest, by outcome (indexed, skipped: unchanged, failed).",
    ["outcome"],
)
for _outcome in ("indexed", "skipped", "failed"):
    INGEST_DOCUMENTS.labels(outcome=_outcome)
for _operation in ("search", "ingest"):
    RETRIEVAL_DURATION.labels(operation=_operation)
