"""Unit tests: text extraction, sectioning, token-bounded chunking, deterministic ids."""

from __future__ import annotations

import uuid

import pytest

from cai_retriever.chunking import (
    Chunker,
    chunk_id,
    content_hash,
    guess_content_type,
    html_to_text,
    markdown_sections,
    markdown_title,
)
from cai_retriever.errors import InvalidArgument
from cai_retriever.ingest import normalise
from cai_retriever.models import Chunk, Document


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(chunk_size=64, chunk_overlap=16)


def make(text: str, content_type: str = "text/markdown", **kw: str) -> Document:
    return Document(
        document_id=kw.get("document_id", "d1"),
        title=kw.get("title", ""),
        source=kw.get("source", "docs/d1.md"),
        content_type=content_type,
        text=text,
    )


def test_guess_content_type_prefers_declared_then_suffix() -> None:
    assert guess_content_type("a/b.md") == "text/markdown"
    assert guess_content_type("a/b.HTM") == "text/html"
    assert guess_content_type("https://x.org/page.html?q=1") == "text/html"
    assert guess_content_type("notes") == "text/plain"
    assert guess_content_type("a.md", "text/html; charset=utf-8") == "text/html"
    assert guess_content_type("a", "application/pdf") == "application/pdf"


def test_markdown_sections_track_heading_path_and_ignore_code_fences() -> None:
    text = "\n".join(
        [
            "# Guide",
            "intro text",
            "## Install",
            "run it",
            "```bash",
            "# not a heading",
            "make up",
            "```",
            "### Details",
            "more",
            "## Empty",
            "## Use",
            "use it",
        ]
    )
    sections = markdown_sections(text)
    assert [s.path for s in sections] == [
        ("Guide",),
        ("Guide", "Install"),
        ("Guide", "Install", "Details"),
        ("Guide", "Use"),
    ]
    assert "# not a heading" in sections[1].text
    assert sections[1].text.startswith("## Install")
    assert markdown_title(text) == "Guide"


def test_html_to_text_drops_scripts_and_keeps_headings() -> None:
    title, text = html_to_text(
        "<html><head><title>Page T</title><style>p{}</style></head>"
        "<body><script>alert(1)</script><h2>Part</h2><p>Hello <b>world</b></p></body></html>"
    )
    assert title == "Page T"
    assert "alert" not in text and "p{}" not in text
    assert "## Part" in text
    assert "Hello" in text and "world" in text


def test_chunks_are_token_bounded_overlapping_and_numbered(chunker: Chunker) -> None:
    sentences = [f"Sentence number {i} talks about topic {i % 7}." for i in range(80)]
    title, chunks = chunker.split(make(" ".join(sentences), "text/plain", source="notes.txt"))
    assert title == "notes.txt"
    assert len(chunks) > 5
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(chunker.count_tokens(c.text) <= 64 for c in chunks)
    # Overlap: consecutive chunks share text.
    shared = sum(
        1 for a, b in zip(chunks, chunks[1:], strict=False) if a.text.split()[-1] in b.text
    )
    assert shared >= len(chunks) // 2
    # Nothing lost: every sentence is somewhere.
    joined = " ".join(c.text for c in chunks)
    assert all(s in joined for s in sentences)


def test_markdown_chunks_carry_section_and_title(chunker: Chunker) -> None:
    text = "# Cai\n\nIntro.\n\n## Resume\n\n" + "Streams resume with Last-Event-ID. " * 20
    title, chunks = chunker.split(make(text))
    assert title == "Cai"
    assert chunks[0].section == "Cai"
    assert {c.section for c in chunks[1:]} == {"Cai > Resume"}
    assert chunks[1].embedding_text(title).startswith("Cai > Resume\n\n")
    assert Chunk(0, "x", "").embedding_text("T") == "T\n\nx"


def test_overlap_must_be_smaller_than_size() -> None:
    with pytest.raises(ValueError):
        Chunker(chunk_size=32, chunk_overlap=32)


def test_chunk_ids_are_deterministic_and_scoped() -> None:
    a = chunk_id("t1", "docs", "doc", 0)
    assert a == chunk_id("t1", "docs", "doc", 0)
    assert uuid.UUID(a).version == 5
    others = {
        chunk_id("t2", "docs", "doc", 0),
        chunk_id("t1", "other", "doc", 0),
        chunk_id("t1", "docs", "doc2", 0),
        chunk_id("t1", "docs", "doc", 1),
    }
    assert a not in others and len(others) == 4


def test_content_hash_changes_with_text_params_and_model() -> None:
    d = make("hello")
    base = content_hash(d, "v1/64/16", "m")
    assert base == content_hash(make("hello"), "v1/64/16", "m")
    assert base != content_hash(make("hello!"), "v1/64/16", "m")
    assert base != content_hash(d, "v1/128/16", "m")
    assert base != content_hash(d, "v1/64/16", "other-model")


def test_normalise_fills_id_and_rejects_bad_documents() -> None:
    d = normalise(make("text", "", document_id="", source="docs/a.md"), 1000)
    assert d.document_id == "docs/a.md" and d.content_type == "text/markdown"
    with pytest.raises(InvalidArgument, match="empty"):
        normalise(make("   \n"), 1000)
    with pytest.raises(InvalidArgument, match="over the limit of 10 bytes"):
        normalise(make("x" * 11), 10)
    with pytest.raises(InvalidArgument, match="neither a document_id nor a source"):
        normalise(make("x", document_id="", source=""), 10)
    with pytest.raises(InvalidArgument, match="not supported"):
        normalise(make("x", "application/pdf"), 10)
    bad_meta = Document("d", "", "s.md", "", "x", {"a.b": "v"})
    with pytest.raises(InvalidArgument, match="metadata key"):
        normalise(bad_meta, 10)
