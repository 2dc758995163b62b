"""A tool for the security stack (the orchestrator imports it by path): it fails the way a real
backend does, with an internal address in the exception's text."""

from __future__ import annotations

from langchain_core.tools import tool

INTERNAL_DETAIL = "inventory-db.internal.svc:5432 refused the connection (user cai_rw)"


@tool
def inventory(item: str = "") -> str:
    """Look up how many of an item are in stock."""
    raise ConnectionError(INTERNAL_DETAIL)
