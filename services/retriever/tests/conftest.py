"""Shared fixtures: one real model per session, a real grpc.aio retriever over local Qdrant."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from cai.v1 import retriever_pb2_grpc
from cai_retriever.embeddings import SentenceTransformerEmbedder, bundled_model_path
from cai_retriever.server import RetrieverServer

# Other services have tests/ folders too, so this one is not a package: make its helper module
# importable explicitly.
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from retriever_support import make_settings, start_server  # noqa: E402


@pytest.fixture(scope="session")
async def embedder() -> AsyncIterator[SentenceTransformerEmbedder]:
    """The real all-MiniLM-L6-v2, loaded once for the whole session."""
    model = await SentenceTransformerEmbedder.load(bundled_model_path(), "all-MiniLM-L6-v2")
    yield model
    await model.aclose()


@pytest.fixture(scope="session")
async def server(
    embedder: SentenceTransformerEmbedder, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RetrieverServer]:
    """A retriever on a free port with an embedded Qdrant in a temporary folder, ready."""
    srv = await start_server(make_settings(tmp_path_factory.mktemp("retriever")), embedder)
    await srv.ready.wait()
    yield srv
    await srv.stop(0)


@pytest.fixture(scope="session")
async def channel(server: RetrieverServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel: grpc.aio.Channel) -> retriever_pb2_grpc.RetrieverStub:
    return retriever_pb2_grpc.RetrieverStub(channel)


@pytest.fixture
def tenant() -> str:
    """A fresh tenant per test, so tests never see each other's documents."""
    return f"t-{uuid.uuid4().hex[:8]}"
