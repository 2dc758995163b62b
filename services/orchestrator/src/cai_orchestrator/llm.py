"""The one factory for chat models: any OpenAI-compatible endpoint (offline: tools/llm-sim)."""

from __future__ import annotations

from functools import lru_cache

from langchain_openai import ChatOpenAI

from cai_orchestrator.config import Settings


class ModelFactory:
    """Builds (and caches) ChatOpenAI clients per (model, temperature)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @lru_cache(maxsize=64)  # noqa: B019 - the factory lives as long as the process
    def chat_model(self, model: str = "", temperature: float = 0.0) -> ChatOpenAI:
        """A streaming chat model with a timeout and bounded retries."""
        s = self.settings
        return ChatOpenAI(
            model=model or s.default_model,
            temperature=temperature,
            base_url=s.openai_base_url,
            api_key=s.openai_api_key,  # type: ignore[arg-type]
            streaming=True,
            stream_usage=True,
            timeout=s.llm_timeout_seconds,
            max_retries=s.llm_max_retries,
        )
