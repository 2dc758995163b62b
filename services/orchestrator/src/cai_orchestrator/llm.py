"""The one factory for chat models: any OpenAI-compatible endpoint (offline: tools/llm-sim)."""

from __future__ import annotations

from functools import lru_cache

import httpx

from cai_orchestrator.config import Settings
from cai_orchestrator.model_stream import StreamingChatOpenAI


class ModelFactory:
    """Builds (and caches) ChatOpenAI clients per (model, temperature)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def chat_model(
        self, model: str = "", temperature: float = 0.0, headers: dict[str, str] | None = None
    ) -> StreamingChatOpenAI:
        """A streaming chat model with a stall timeout and bounded retries (cached)."""
        return self._chat_model(model, temperature, tuple(sorted((headers or {}).items())))

    @lru_cache(maxsize=64)  # noqa: B019 - the factory lives as long as the process
    def _chat_model(
        self, model: str, temperature: float, headers: tuple[tuple[str, str], ...]
    ) -> StreamingChatOpenAI:
        s = self.settings
        return StreamingChatOpenAI(
            default_headers=dict(headers) or None,
            model=model or s.default_model,
            temperature=temperature,
            base_url=s.openai_base_url,
            api_key=s.openai_api_key,  # type: ignore[arg-type]
            streaming=True,
            stream_usage=True,
            timeout=httpx.Timeout(s.llm_stall_seconds, connect=s.llm_connect_timeout_seconds),
            max_retries=s.llm_max_retries,
            # langchain-openai wraps every chunk in asyncio.wait_for (120 s by default). On
            # Python 3.11 wait_for swallows a cancellation that lands as a chunk arrives, so a
            # cancelled run went on generating; it also costs a task per token. Stalls are
            # caught by the read timeout above.
            stream_chunk_timeout=None,
        )
