"""The `cai` CLI as a real subprocess against a real retriever subprocess (real model)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

BIN = Path(sys.executable).parent

# Starts real processes (the retriever and the CLI): skipped by `make test-fast`.
pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF showing `text` in Helvetica, with a correct xref table."""
    stream = f"BT /F1 12 Tf 72 712 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


@pytest.fixture(scope="module")
def retriever_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    """`python -m cai_retriever` on a free port; yields its address and the health states seen."""
    tmp = tmp_path_factory.mktemp("retriever-proc")
    port = free_port()
    env = {
        **os.environ,
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": str(port),
        "METRICS_PORT": "0",
        "QDRANT_PATH": str(tmp / "qdrant"),
        "HF_HUB_OFFLINE": "1",
        "LOG_LEVEL": "INFO",
    }
    log = (tmp / "retriever.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cai_retriever"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    addr = f"127.0.0.1:{port}"
    seen: list[str] = []
    try:
        with grpc.insecure_channel(addr) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
                    if not seen or seen[-1] != name:
                        seen.append(name)
                    if name == "SERVING":
                        break
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        assert seen and seen[-1] == "SERVING", (
            f"retriever never became SERVING: {seen}\n{(tmp / 'retriever.log').read_text()}"
        )
        yield addr, seen
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        log.close()
    assert code == 0, (tmp / "retriever.log").read_text()


def cai(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cai"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RETRIEVER_ADDR": "127.0.0.1:1"},
    )


def test_health_is_not_serving_until_the_model_is_loaded(retriever_process) -> None:
    _, seen = retriever_process
    assert seen == ["NOT_SERVING", "SERVING"]


def test_cli_ingests_a_folder_and_reingest_skips(retriever_process, tmp_path) -> None:
    addr, _ = retriever_process
    kb = tmp_path / "kb"
    (kb / "sub").mkdir(parents=True)
    (kb / "resume.md").write_text(
        "# Streams\n\n## Resume\n\nSend Last-Event-ID to resume a stream without losing tokens.\n"
    )
    (kb / "notes.txt").write_text("Pelicans eat fish. The queue lives in Redis streams.\n")
    (kb / "sub" / "page.html").write_text(
        "<html><head><title>Ops</title></head><body><h1>Ops</h1>"
        "<p>Scale orchestrators with KEDA on queue lag.</p></body></html>"
    )
    (kb / "sub" / "manual.pdf").write_bytes(minimal_pdf("Rotate the API keys every ninety days"))
    (kb / "ignored.py").write_text("print('not ingested')\n")

    first = cai(
        "ingest", "kb", "--addr", addr, "--tenant", "cli", "--meta", "team=docs", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    assert "ingested 4 documents (4 chunks), 0 unchanged, 0 failed" in first.stdout
    assert "collection '(default)' for tenant 'cli'" in first.stdout
    assert "doc" in first.stderr  # the tqdm progress bar

    found = cai(
        "search",
        "how often should API keys be rotated",
        "-k",
        "1",
        "--addr",
        addr,
        "--tenant",
        "cli",
        cwd=tmp_path,
    )
    assert found.returncode == 0, found.stderr
    assert "kb/sub/manual.pdf" in found.stdout and "ninety days" in found.stdout

    again = cai(
        "ingest", "kb", "--addr", addr, "--tenant", "cli", "--meta", "team=docs", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert "ingested 0 documents (0 chunks), 4 unchanged, 0 failed" in again.stdout

    stats = cai("stats", "--addr", addr, "--tenant", "cli", cwd=tmp_path)
    assert "4 documents, 4 chunks, 384-dimensional vectors from all-MiniLM-L6-v2" in stats.stdout


def test_cli_fails_when_a_document_fails(retriever_process, tmp_path) -> None:
    addr, _ = retriever_process
    (tmp_path / "empty.md").write_text("   \n")
    (tmp_path / "fine.md").write_text("# Fine\n\nThis one is fine.\n")
    result = cai("ingest", "empty.md", "fine.md", "--addr", addr, "--tenant", "cli-f", cwd=tmp_path)
    assert result.returncode == 1
    assert "ingested 1 documents (1 chunks), 0 unchanged, 1 failed" in result.stdout
    assert "failed: empty.md: document text is empty" in result.stdout


def test_cli_fails_on_a_missing_path(tmp_path) -> None:
    result = cai("ingest", "does-not-exist", cwd=tmp_path)
    assert result.returncode == 2
    assert "no such file or directory: does-not-exist" in result.stderr


def test_cli_fails_when_the_retriever_is_unreachable(tmp_path) -> None:
    (tmp_path / "a.md").write_text("# A\n\ntext\n")
    result = cai(
        "ingest", "a.md", "--addr", f"127.0.0.1:{free_port()}", "--wait", "1", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "is not ready after 1 s" in result.stderr
