"""The OpenAI-compatible embeddings alternative, against a small in-test `/v1/embeddings` server."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from retriever_support import doc, ingest, make_settings, principal, search

from cai.v1 import retriever_pb2, retriever_pb2_grpc
from cai_retriever.server import RetrieverServer

DIMENSION = 64


def hashed_vector(text: str) -> list[float]:
    """Bag of words hashed into DIMENSION buckets, unit length (like tools/llm-sim)."""
    vector = [0.0] * DIMENSION
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        digest = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        vector[digest % DIMENSION] += 1.0 if digest >> 63 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class EmbeddingsServer(ThreadingHTTPServer):
    requests: list[dict]


class Handler(BaseHTTPRequestHandler):
    server: EmbeddingsServer

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/embeddings":
            self.send_error(404)
            return
        self.server.requests.append({"auth": self.headers.get("Authorization"), **body})
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, text in enumerate(inputs):
            vector = hashed_vector(text)
            if body.get("encoding_format") == "base64":
                embedding: object = base64.b64encode(
                    struct.pack(f"<{DIMENSION}f", *vector)
                ).decode()
            else:
                embedding = vector
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        payload = json.dumps(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def embeddings_server() -> Iterator[EmbeddingsServer]:
    httpd = EmbeddingsServer(("127.0.0.1", 0), Handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


async def test_openai_compatible_endpoint_end_to_end(embeddings_server, tmp_path) -> None:
    port = embeddings_server.server_address[1]
    settings = make_settings(
        tmp_path,
        embeddings_base_url=f"http://127.0.0.1:{port}/v1",
        embeddings_model="sim-embed",
        embeddings_api_key="sk-test",
    )
    server = RetrieverServer(settings)  # the real factory: make_embedder(settings)
    await server.start()
    try:
        await server.ready.wait()
        assert server.embedder is not None and server.embedder.dimension == DIMENSION
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = retriever_pb2_grpc.RetrieverStub(channel)
            summary = await ingest(
                stub,
                "acme",
                [
                    doc("pelicans", "# Birds\n\nPelicans scoop fish with their large bill pouch."),
                    doc("redis", "# Queue\n\nRedis streams carry the run queue and event logs."),
                ],
            )
            assert (summary.documents, list(summary.errors)) == (2, [])
            passages = await search(stub, "acme", "which bird scoops fish", k=1)
            assert passages[0].document_id == "pelicans"
            stats = await stub.Stats(retriever_pb2.StatsRequest(principal=principal("acme")))
            assert (stats.vector_size, stats.embedding_model) == (DIMENSION, "sim-embed")
    finally:
        await server.stop(0)
    seen = embeddings_server.requests
    assert {r["model"] for r in seen} == {"sim-embed"}
    assert {r["auth"] for r in seen} == {"Bearer sk-test"}
    # Chunks were sent as raw strings in batches, not as token ids.
    assert any(isinstance(r["input"], list) and len(r["input"]) == 2 for r in seen)
    assert all(
        isinstance(t, str)
        for r in seen
        for t in (r["input"] if isinstance(r["input"], list) else [r["input"]])
    )


async def test_unreachable_endpoint_keeps_health_not_serving(tmp_path, unused_tcp_port) -> None:
    settings = make_settings(tmp_path, embeddings_base_url=f"http://127.0.0.1:{unused_tcp_port}/v1")
    server = RetrieverServer(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert server.embedder is None and not server.ready.is_set()
    finally:
        await server.stop(0)
