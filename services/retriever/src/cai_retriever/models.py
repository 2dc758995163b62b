"""Domain objects of the retriever; protobuf types stop at `convert.py`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Document:
    """A document to ingest, as sent by a client."""

    document_id: str
    title: str
    source: str
    content_type: str
    text: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    """One piece of a document, the unit that is embedded and stored."""

    index: int
    text: str
    # Heading path of the section the chunk comes from ("Retrieval > Chunking"), or "".
    section: str

    def embedding_text(self, title: str) -> str:
        """The text given to the embedding model: section (or title) context, then the chunk."""
        context = self.section or title
        return f"{context}\n\n{self.text}" if context else self.text


@dataclass(frozen=True)
class Passage:
    """A search hit."""

    text: str
    score: float
    document_id: str
    chunk_id: str
    title: str
    source: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class SearchQuery:
    """A validated search request."""

    tenant_id: str
    collection: str
    query: str
    k: int
    filter: dict[str, str]
    score_threshold: float | None


@dataclass(frozen=True)
class DocumentResult:
    """What happened to one ingested document."""

    document_id: str
    source: str
    outcome: str  # "indexed" | "skipped" | "failed"
    chunks: int = 0
    message: str = ""


@dataclass
class IngestReport:
    """Totals of one ingest stream."""

    documents: int = 0
    chunks: int = 0
    skipped: int = 0
    errors: list[DocumentResult] = field(default_factory=list)

    def add(self, result: DocumentResult) -> None:
        """Count one document's result."""
        if result.outcome == "indexed":
            self.documents += 1
            self.chunks += result.chunks
        elif result.outcome == "skipped":
            self.skipped += 1
        else:
            self.errors.append(result)


@dataclass(frozen=True)
class CollectionStats:
    """Per-tenant size of a collection."""

    collection: str
    chunks: int
    documents: int
    vector_size: int
    embedding_model: str
