"""Tools loaded by import path in the agent tests (the orchestrator imports this module)."""

from __future__ import annotations

import asyncio

from langchain_core.tools import tool


@tool
async def slow_tool(topic: str = "") -> str:
    """Look something up very slowly."""
    await asyncio.sleep(30)
    return "too late"


@tool
def broken_tool(topic: str = "") -> str:
    """A tool that always fails."""
    raise RuntimeError("the backend of broken_tool is down")


async def delete_everything(what: str = "") -> str:
    """Delete things (requires a person's approval)."""
    return f"deleted {what}"


def echo(text: str = "") -> str:
    """Echo the text back."""
    return f"echo: {text}"
