"""Build, serve and shut down the retriever.

The gRPC port opens first with health NOT_SERVING; the model loads and Qdrant is opened in the
background; health turns SERVING only when both are ready, and follows Qdrant afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from cai.v1 import retriever_pb2_grpc
from cai_common.grpc_server import GrpcService
from cai_common.metrics import start_metrics_server
from cai_retriever.config import Settings
from cai_retriever.embeddings import Embedder, make_embedder
from cai_retriever.errors import RetrieverError
from cai_retriever.service import KnowledgeBase
from cai_retriever.servicers.retriever import RetrieverServicer
from cai_retriever.store import VectorStore

log = logging.getLogger(__name__)

SERVICE_NAME = "cai.v1.Retriever"


def make_store(settings: Settings) -> VectorStore:
    """The vector store the settings ask for: a Qdrant server with QDRANT_URL, else local mode."""
    api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
    return VectorStore(
        url=settings.qdrant_url,
        path=settings.qdrant_path,
        api_key=api_key,
        timeout=settings.qdrant_timeout_seconds,
        metadata_index_fields=settings.metadata_index_fields,
    )


class RetrieverServer:
    """The retriever process: gRPC server, readiness, health monitoring and shutdown.

    Args:
        settings: Service settings.
        load_embedder: Loads the embedding model; defaults to `make_embedder(settings)`. Tests
            pass an already-loaded model.
        store: The vector store; defaults to `make_store(settings)`.
    """

    def __init__(
        self,
        settings: Settings,
        load_embedder: Callable[[], Awaitable[Embedder]] | None = None,
        store: VectorStore | None = None,
    ) -> None:
        self.settings = settings
        # An injected model belongs to the caller (tests share one); only ours is closed here.
        self._owns_embedder = load_embedder is None
        self._load_embedder = load_embedder or (lambda: make_embedder(settings))
        self.store = store or make_store(settings)
        self.embedder: Embedder | None = None
        self.knowledge_base: KnowledgeBase | None = None
        self.grpc = GrpcService.from_settings("retriever", settings)
        servicer = RetrieverServicer(lambda: self.knowledge_base)
        self.grpc.add(
            SERVICE_NAME,
            lambda s: retriever_pb2_grpc.add_RetrieverServicer_to_server(servicer, s),
        )
        self.ready = asyncio.Event()
        self.failure: BaseException | None = None
        self._serving = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def port(self) -> int:
        """The bound gRPC port (useful when configured as 0)."""
        return self.grpc.port

    async def start(self) -> None:
        """Open the port (NOT_SERVING) and start getting ready in the background."""
        await self.grpc.start()
        self._tasks.append(asyncio.create_task(self._get_ready(), name="retriever-ready"))

    async def _get_ready(self) -> None:
        delay = 1.0
        while self.embedder is None:
            try:
                self.embedder = await self._load_embedder()
            except RetrieverError as exc:
                # An endpoint that is not up yet: stay NOT_SERVING and retry.
                log.warning(
                    "embeddings unavailable, retrying",
                    extra={"error": str(exc), "retry_in_s": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            except Exception as exc:  # a broken model install: exit rather than serve nothing
                log.exception("cannot load the embedding model")
                self.failure = exc
                self.grpc.stopping.set()
                return
        try:
            await self.store.open()
        except Exception as exc:  # a locked or unreadable local store will not heal by waiting
            log.exception("cannot open the vector store", extra={"path": self.store.location})
            self.failure = exc
            self.grpc.stopping.set()
            return
        self.knowledge_base = KnowledgeBase(self.settings, self.store, self.embedder)
        log.info(
            "retriever ready to check store",
            extra={
                "model": self.embedder.model_name,
                "dimension": self.embedder.dimension,
                "store": "local" if self.store.local else "server",
                "location": self.store.location,
            },
        )
        await self._watch_store()

    async def _watch_store(self) -> None:
        """Keep health equal to "the model is loaded and Qdrant answers"."""
        while True:
            serving = await self.store.ping()
            if serving != self._serving:
                self._serving = serving
                await self.grpc.set_serving(serving)
                log.info("health changed", extra={"serving": serving})
                if serving:
                    self.ready.set()
            await asyncio.sleep(self.settings.health_check_interval_seconds)

    async def close(self) -> None:
        """Stop the background tasks and release the model and the store."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.embedder is not None and self._owns_embedder:
            await self.embedder.aclose()
        await self.store.close()

    async def stop(self, grace_s: float = 0.0) -> None:
        """Health NOT_SERVING, stop the server within `grace_s`, then release everything."""
        await self.grpc.health.enter_graceful_shutdown()
        await self.grpc.stop(grace_s)
        await self.close()


async def serve(settings: Settings) -> None:
    """Run the retriever until SIGTERM/SIGINT, then drain within the shutdown grace."""
    start_metrics_server(settings.metrics_port)
    server = RetrieverServer(settings)
    await server.start()
    server.grpc.install_signal_handlers()
    await server.grpc.run(settings.shutdown_grace_seconds, on_stop=None)
    await server.close()
    if server.failure is not None:
        raise SystemExit(1)
