"""llm-sim: an OpenAI-compatible simulator (never a real model)."""
