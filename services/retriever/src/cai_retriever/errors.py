"""Domain errors; the servicer maps each to a gRPC status code."""

from __future__ import annotations


class RetrieverError(Exception):
    """Base class: a failure with a message that is safe to show to the caller."""


class InvalidArgument(RetrieverError):
    """The request is malformed (empty query, bad k, bad collection name...)."""


class NotFound(RetrieverError):
    """The named collection does not exist."""


class FailedPrecondition(RetrieverError):
    """The request is valid but the stored state does not allow it (e.g. vector size mismatch)."""


class Unavailable(RetrieverError):
    """A dependency (Qdrant, the embeddings endpoint) did not answer, or the service is starting."""
