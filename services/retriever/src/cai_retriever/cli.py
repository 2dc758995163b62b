"""`cai` command line: ingest files into the retriever, search it, show stats.

    cai ingest PATH... [--collection C] [--tenant T] [--addr host:port] [--meta key=value]
    cai search "question" [-k 5] [--collection C] [--tenant T]
    cai stats [--collection C] [--tenant T]

With GRPC_TLS_CERT_FILE, GRPC_TLS_KEY_FILE and GRPC_TLS_CA_FILE set (as they are inside the
retriever's pod when the chart turns mutual TLS on) the command dials over mutual TLS;
GRPC_TLS_SERVER_NAME names the server certificate when --addr is an IP or a port-forward.

Exit codes: 0 success, 1 a document failed or the retriever refused/was unreachable, 2 bad usage
(e.g. a path that does not exist).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cai.v1 import common_pb2, retriever_pb2, retriever_pb2_grpc
from cai_common.grpc_tls import TLSConfigError
from cai_common.settings import ServiceSettings

INGESTED_SUFFIXES = {".md", ".markdown", ".txt", ".text", ".html", ".htm", ".pdf"}
CONTENT_TYPES = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
}
SKIPPED_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}
DEFAULT_ADDR = os.environ.get("RETRIEVER_ADDR", "127.0.0.1:50052")
# Below the server's 16 MiB message limit; the server applies its own MAX_DOCUMENT_BYTES too.
DEFAULT_MAX_BYTES = 15 * 1024 * 1024


def echo(message: str, file: TextIO | None = None) -> None:
    """Write one line to stdout (or `file`); the CLI's only output path."""
    stream = file or sys.stdout
    stream.write(message + "\n")
    stream.flush()


class UsageError(Exception):
    """Bad command line (exit 2)."""


def open_channel(addr: str, options: Sequence[tuple[str, int | str]] = ()) -> grpc.Channel:
    """A channel to the retriever: mutual TLS when the GRPC_TLS_* files are set, else plaintext.

    Raises:
        TLSConfigError: the TLS settings are incomplete or unreadable.
    """
    settings = ServiceSettings()
    tls = settings.grpc_tls()
    if tls is None:
        return grpc.insecure_channel(addr, options=list(options))
    extra = [("grpc.ssl_target_name_override", settings.grpc_tls_server_name)]
    return grpc.secure_channel(
        addr,
        tls.channel_credentials(),
        options=[*options, *(extra if settings.grpc_tls_server_name else [])],
    )


def collect_files(paths: Sequence[str]) -> list[Path]:
    """Files to ingest: given files as they are, directories recursed for supported suffixes.

    Raises:
        UsageError: a path does not exist.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
                for name in sorted(names):
                    if Path(name).suffix.lower() in INGESTED_SUFFIXES:
                        files.append(Path(root) / name)
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"no such file or directory: {raw}")
    unique = list(dict.fromkeys(files))
    return unique


def display_source(path: Path) -> str:
    """A stable, readable source for a file: relative to the working directory if inside it."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def pdf_text(path: Path) -> str:
    """Text of a PDF, page by page (needs `pypdf`)."""
    from pypdf import PdfReader

    reader = PdfReader(path)
    return "\n\n".join(page.extract_text() or "" for page in reader.pages)


@dataclass
class LocalFailure:
    """A file that could not be read or sent; counted as a failed document."""

    source: str
    message: str


def read_document(path: Path, metadata: dict[str, str], max_bytes: int) -> retriever_pb2.Document:
    """The document message of a file.

    Raises:
        ValueError: the file is too large or cannot be read as text.
    """
    source = display_source(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"file is {size} bytes, over --max-bytes {max_bytes}")
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        text, content_type = pdf_text(path), "text/plain"
    else:
        text = path.read_bytes().decode("utf-8", errors="replace")
        content_type = CONTENT_TYPES.get(suffix, "text/plain")
    return retriever_pb2.Document(
        document_id=source,
        source=source,
        content_type=content_type,
        text=text,
        metadata=metadata,
    )


def parse_metadata(pairs: Sequence[str]) -> dict[str, str]:
    """`key=value` pairs from `--meta`."""
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--meta expects key=value, got {pair!r}")
        metadata[key] = value
    return metadata


def wait_ready(channel: grpc.Channel, addr: str, wait_s: float) -> None:
    """Block until the retriever's health is SERVING, or fail after `wait_s` seconds."""
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + wait_s
    last = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        try:
            reply = health.Check(
                health_pb2.HealthCheckRequest(service=""),
                timeout=max(0.5, min(remaining, 5.0)),
                wait_for_ready=True,
            )
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        if time.monotonic() >= deadline:
            raise ConnectionError(f"retriever at {addr} is not ready after {wait_s:g} s ({last})")
        time.sleep(0.5)


def ingest(args: argparse.Namespace) -> int:
    """Stream files to the retriever with a progress bar; print a summary."""
    from tqdm import tqdm

    files = collect_files(args.paths)
    metadata = parse_metadata(args.meta)
    if not files:
        echo("nothing to ingest: no .md, .txt, .html or .pdf files found", file=sys.stderr)
        return 1
    local_failures: list[LocalFailure] = []
    principal = common_pb2.Principal(tenant_id=args.tenant, subject="cai-cli")

    def requests() -> Iterator[retriever_pb2.IngestRequest]:
        yield retriever_pb2.IngestRequest(principal=principal, collection=args.collection)
        for path in files:
            try:
                document = read_document(path, metadata, args.max_bytes)
            except (OSError, ValueError, ImportError) as exc:
                local_failures.append(LocalFailure(display_source(path), str(exc)))
                bar.update(1)
                continue
            yield retriever_pb2.IngestRequest(document=document)

    chunks = indexed = skipped = 0
    summary: retriever_pb2.IngestSummary | None = None
    with open_channel(
        args.addr, options=[("grpc.max_send_message_length", 16 * 1024 * 1024)]
    ) as channel:
        try:
            wait_ready(channel, args.addr, args.wait)
        except ConnectionError as exc:
            echo(f"error: {exc}", file=sys.stderr)
            return 1
        stub = retriever_pb2_grpc.RetrieverStub(channel)
        started = time.monotonic()  # after the wait, so the rate is the ingest's own
        bar = tqdm(
            total=len(files),
            unit="doc",
            desc="ingest",
            disable=args.quiet,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        try:
            for event in stub.IngestWithProgress(requests(), timeout=args.timeout):
                if event.HasField("summary"):
                    summary = event.summary
                    continue
                bar.update(1)
                if event.document.outcome == "indexed":
                    indexed += 1
                    chunks += event.document.chunks
                elif event.document.outcome == "skipped":
                    skipped += 1
                elapsed = max(time.monotonic() - started, 1e-6)
                bar.set_postfix(
                    chunks=chunks,
                    chunks_s=f"{chunks / elapsed:.1f}",
                    skipped=skipped,
                    refresh=False,
                )
        except grpc.RpcError as exc:
            bar.close()
            echo(
                f"error: retriever at {args.addr}: {exc.code().name}: {exc.details()}",
                file=sys.stderr,
            )
            return 1
        bar.close()
    elapsed = time.monotonic() - started
    if summary is None:
        echo("error: the retriever ended the stream without a summary", file=sys.stderr)
        return 1
    failed = len(summary.errors) + len(local_failures)
    echo(
        f"ingested {summary.documents} documents ({summary.chunks} chunks), "
        f"{summary.skipped} unchanged, {failed} failed into collection "
        f"{args.collection or '(default)'!r} for tenant {args.tenant!r} "
        f"in {elapsed:.1f} s ({summary.chunks / max(elapsed, 1e-6):.1f} chunks/s)"
    )
    for error in summary.errors:
        echo(f"  failed: {error.source or error.document_id}: {error.message}")
    for failure in local_failures:
        echo(f"  failed: {failure.source}: {failure.message}")
    return 1 if failed else 0


def search(args: argparse.Namespace) -> int:
    """Print the best passages for a query."""
    with open_channel(args.addr) as channel:
        stub = retriever_pb2_grpc.RetrieverStub(channel)
        try:
            reply = stub.Search(
                retriever_pb2.SearchRequest(
                    principal=common_pb2.Principal(tenant_id=args.tenant, subject="cai-cli"),
                    query=args.query,
                    collection=args.collection,
                    k=args.k,
                ),
                timeout=args.timeout,
            )
        except grpc.RpcError as exc:
            echo(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    for rank, passage in enumerate(reply.passages, 1):
        section = passage.metadata.get("section", "")
        where = f"{passage.source} — {section}" if section else passage.source
        echo(f"{rank}. [{passage.score:.3f}] {where}")
        echo("   " + passage.text.replace("\n", "\n   ")[:600])
    if not reply.passages:
        echo("no passages found")
    return 0


def stats(args: argparse.Namespace) -> int:
    """Print the tenant's counts in a collection."""
    with open_channel(args.addr) as channel:
        stub = retriever_pb2_grpc.RetrieverStub(channel)
        try:
            reply = stub.Stats(
                retriever_pb2.StatsRequest(
                    principal=common_pb2.Principal(tenant_id=args.tenant, subject="cai-cli"),
                    collection=args.collection,
                ),
                timeout=args.timeout,
            )
        except grpc.RpcError as exc:
            echo(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    echo(
        f"collection {reply.collection!r}: {reply.documents} documents, {reply.chunks} chunks, "
        f"{reply.vector_size}-dimensional vectors from {reply.embedding_model}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `cai` argument parser."""
    parser = argparse.ArgumentParser(prog="cai", description="Cai knowledge-base commands.")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--collection", default="", help="collection (default: the server's)")
        sub.add_argument("--tenant", default="default", help="tenant id (default: default)")
        sub.add_argument(
            "--addr", default=DEFAULT_ADDR, help=f"retriever host:port (default: {DEFAULT_ADDR})"
        )

    p_ingest = commands.add_parser("ingest", help="ingest files and directories")
    p_ingest.add_argument("paths", nargs="+", metavar="PATH")
    common(p_ingest)
    p_ingest.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata for every file"
    )
    p_ingest.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for the retriever to be ready"
    )
    p_ingest.add_argument("--timeout", type=float, default=3600.0, help="seconds for the upload")
    p_ingest.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    p_ingest.add_argument("--quiet", action="store_true", help="no progress bar")
    p_ingest.set_defaults(func=ingest)

    p_search = commands.add_parser("search", help="search the knowledge base")
    p_search.add_argument("query")
    p_search.add_argument("-k", type=int, default=5)
    common(p_search)
    p_search.add_argument("--timeout", type=float, default=30.0)
    p_search.set_defaults(func=search)

    p_stats = commands.add_parser("stats", help="document and chunk counts")
    common(p_stats)
    p_stats.add_argument("--timeout", type=float, default=30.0)
    p_stats.set_defaults(func=stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `cai` command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UsageError, TLSConfigError) as exc:
        echo(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
