"""What a client is told when a run or a tool fails, and what only the log is told.

An exception's text is not for clients: it carries the model endpoint's error body, Redis and
gRPC peer addresses, file paths. A client gets a safe *kind* ("model_error"), a fixed message for
that kind and an `error_id`; the log line with that id has the details (the exception, its
traceback), so an operator can find what a user reports.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

import openai
from langgraph.errors import GraphRecursionError
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

INTERNAL = ("internal_error", "The run failed because of an internal error")


@dataclass(frozen=True)
class Failure:
    """A failure as a client sees it."""

    kind: str
    message: str
    error_id: str

    def payload(self) -> dict[str, str]:
        """The terminal `error` event's data."""
        return {"error": self.kind, "message": self.message, "error_id": self.error_id}

    @property
    def summary(self) -> str:
        """One line for the run record's `error` field."""
        return f"{self.message} (error id {self.error_id})"


def describe(exc: BaseException) -> tuple[str, str]:
    """The kind of a run's failure and the fixed message for it (nothing of the exception's
    text, beyond an HTTP status code)."""
    if isinstance(exc, openai.APITimeoutError):
        return "model_timeout", "The model did not answer in time"
    if isinstance(exc, openai.APIConnectionError):
        return "model_unavailable", "The model could not be reached"
    if isinstance(exc, openai.APIStatusError):
        return "model_error", f"The model answered with an error (status {exc.status_code})"
    if isinstance(exc, openai.APIError):
        return "model_error", "The model's answer could not be read"
    if isinstance(exc, GraphRecursionError):
        # The limit is the client's own setting (or its assistant's): safe to name.
        limit = _RECURSION_LIMIT.search(str(exc))
        of = f" of {limit[1]}" if limit else ""
        return (
            "recursion_limit",
            f"Recursion limit{of} reached: the run took more steps than it may",
        )
    if isinstance(exc, RedisError):
        return "storage_unavailable", "The run's storage was unavailable"
    return INTERNAL


_RECURSION_LIMIT = re.compile(r"Recursion limit of (\d+) reached")


def report(exc: BaseException, what: str, kind: str = "", message: str = "", **ids: Any) -> Failure:
    """Log `exc` with its details under a new error id, and return what the client may see.

    `kind` and `message` replace the ones `describe` would give (a caller that knows better).
    """
    described = describe(exc)
    failure = Failure(kind or described[0], message or described[1], str(uuid.uuid4()))
    log.warning(
        what,
        exc_info=exc,
        extra={"error_id": failure.error_id, "error_kind": failure.kind, **ids},
    )
    return failure
