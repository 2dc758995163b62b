"""The connection to Qdrant: a server through the async client, or Qdrant embedded in-process.

With `QDRANT_URL` the async client talks to a Qdrant server. Otherwise Qdrant runs embedded
("local mode") in this process, persisted under `QDRANT_PATH`. Local mode is pure Python that
runs synchronously, so here it is driven from one dedicated thread to keep the event loop free;
it is also single-process (a lock file guards the folder), so only one retriever may use a path.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from qdrant_client import AsyncQdrantClient, QdrantClient

from cai_retriever.errors import FailedPrecondition, NotFound, Unavailable

log = logging.getLogger(__name__)


class LocalClient:
    """The synchronous embedded Qdrant, called from a single dedicated thread."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-local")
        self._client: QdrantClient | None = None

    async def call(self, method: str, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(self._call, method, kwargs))

    def _call(self, method: str, kwargs: dict[str, Any]) -> Any:
        if self._client is None:
            Path(self._path).mkdir(parents=True, exist_ok=True)
            self._client = QdrantClient(path=self._path)
        return getattr(self._client, method)(**kwargs)

    async def close(self) -> None:
        if self._client is not None:
            await self.call("close")
        self._executor.shutdown(wait=True)


class RemoteClient:
    """The async client of a Qdrant server."""

    def __init__(self, url: str, api_key: str | None, timeout: float) -> None:
        # The version check is a blocking request in the constructor; skip it on the event loop.
        self._client = AsyncQdrantClient(
            url=url, api_key=api_key, timeout=int(timeout), check_compatibility=False
        )

    async def call(self, method: str, **kwargs: Any) -> Any:
        return await getattr(self._client, method)(**kwargs)

    async def close(self) -> None:
        await self._client.close()


class QdrantConnection:
    """One Qdrant, local or remote, whose failures surface as `Unavailable`.

    Args:
        url: Qdrant server URL; empty for embedded local mode.
        path: Folder of the embedded store (local mode only).
        api_key: Qdrant API key (server mode only).
        timeout: Seconds per Qdrant request (server mode only).
    """

    def __init__(self, url: str, path: str, api_key: str | None, timeout: float) -> None:
        self.local = not url
        self.location = path if self.local else url
        self._client: LocalClient | RemoteClient = (
            LocalClient(path) if self.local else RemoteClient(url, api_key, timeout)
        )

    async def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            return await self._client.call(method, **kwargs)
        except (NotFound, FailedPrecondition):
            raise
        except Exception as exc:  # any client/transport error means Qdrant did not serve us
            log.warning("qdrant call failed", extra={"method": method, "error": repr(exc)})
            raise Unavailable(f"vector store unavailable ({method}): {exc}") from exc

    async def open(self) -> None:
        """Open the embedded store now, so a folder locked by another process fails loudly.

        Raises:
            RuntimeError: local mode, and another process holds `QDRANT_PATH`.
        """
        if isinstance(self._client, LocalClient):
            await self._client.call("get_collections")

    async def ping(self) -> bool:
        """True if Qdrant answers a cheap request."""
        try:
            await self._call("get_collections")
        except Unavailable:
            return False
        return True

    async def close(self) -> None:
        """Close the client (and release the local-mode folder lock)."""
        await self._client.close()
