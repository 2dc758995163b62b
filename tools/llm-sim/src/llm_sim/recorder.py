"""A bounded ring buffer of the chat requests received, for tests to inspect."""

from __future__ import annotations

from collections import deque
from typing import Any

# Request headers worth recording besides every ``x-sim-*`` header.
HEADERS_OF_INTEREST = frozenset(
    {
        b"user-agent",
        b"traceparent",
        b"tracestate",
        b"baggage",
        b"x-request-id",
        b"openai-organization",
        b"openai-project",
    }
)


def headers_of_interest(headers: dict[bytes, bytes]) -> dict[str, str]:
    """The recordable headers; ``authorization`` is reduced to whether it was present."""
    out = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in headers.items()
        if name in HEADERS_OF_INTEREST or name.startswith(b"x-sim-")
    }
    out["authorization"] = "present" if b"authorization" in headers else "absent"
    return out


class RequestLog:
    """The last ``size`` chat requests, oldest first."""

    def __init__(self, size: int) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=size)
        self._seq = 0

    def add(self, record: dict[str, Any]) -> None:
        """Append a record, numbering it."""
        self._seq += 1
        record["seq"] = self._seq
        self._items.append(record)

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The last ``limit`` records (all when None), newest last."""
        items = list(self._items)
        if limit is None:
            return items
        return items[-limit:] if limit > 0 else []

    def clear(self) -> None:
        """Forget every record (the sequence keeps counting)."""
        self._items.clear()
