"""Deterministic embeddings: a hashed bag of words, L2-normalised.

Texts that share content words get similar vectors, so retrieval against them behaves sensibly in
tests; the same text always gives the same vector, in every process.
"""

from __future__ import annotations

import base64
import math
import sys
from array import array
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from hashlib import blake2b
from typing import Any

from llm_sim.errors import InvalidRequest
from llm_sim.text import all_terms, terms

MAX_DIMENSIONS = 8192
_EMPTY_TOKEN = "\x00empty"


@lru_cache(maxsize=65536)
def _bucket(term: str, dimensions: int) -> tuple[int, float]:
    """Index and sign of ``term`` in a vector of ``dimensions`` (feature hashing)."""
    digest = int.from_bytes(blake2b(term.encode(), digest_size=8).digest(), "little")
    return digest % dimensions, (1.0 if digest >> 63 else -1.0)


def embed(text: str, dimensions: int) -> list[float]:
    """A unit vector for ``text``: hashed content words weighted by 1 + log(tf)."""
    counts = Counter(terms(text) or all_terms(text) or (_EMPTY_TOKEN,))
    vector = [0.0] * dimensions
    for term, tf in counts.items():
        index, sign = _bucket(term, dimensions)
        vector[index] += sign * (1.0 + math.log(tf))
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:  # every term cancelled out: fall back to the empty-text vector
        index, sign = _bucket(_EMPTY_TOKEN, dimensions)
        vector[index] = sign
        return vector
    return [v / norm for v in vector]


def to_base64(vector: list[float]) -> str:
    """Little-endian float32 bytes, base64-encoded (OpenAI's ``encoding_format: base64``)."""
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """A validated embeddings request."""

    model: str
    inputs: list[str]
    token_counts: list[int]
    dimensions: int
    encoding_format: str


def _as_text(item: object, param: str) -> tuple[str, int]:
    """One input as text plus its token count; token-id arrays become words ``tok<id>``."""
    if isinstance(item, str):
        return item, len(item.split())
    if (
        isinstance(item, list)
        and item
        and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
    ):
        return " ".join(f"tok{t}" for t in item), len(item)
    raise InvalidRequest("'input' must be a string, an array of strings or of token ids", param)


def parse_embedding_request(payload: object, default_dimensions: int) -> EmbeddingRequest:
    """Validate a decoded ``POST /v1/embeddings`` body.

    Raises:
        InvalidRequest: the body is not a valid embeddings request.
    """
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("Missing required parameter: 'model'.", "model")
    raw: Any = payload.get("input")
    if raw is None:
        raise InvalidRequest("Missing required parameter: 'input'.", "input")
    if isinstance(raw, str) or (
        isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)
    ):
        items: list[Any] = [raw]
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        raise InvalidRequest("'input' must be a non-empty string or array", "input")
    texts: list[str] = []
    counts: list[int] = []
    for i, item in enumerate(items):
        text, count = _as_text(item, f"input[{i}]")
        texts.append(text)
        counts.append(count)
    dimensions = payload.get("dimensions")
    if dimensions is None:
        dimensions = default_dimensions
    elif (
        not isinstance(dimensions, int)
        or isinstance(dimensions, bool)
        or not 1 <= dimensions <= MAX_DIMENSIONS
    ):
        raise InvalidRequest(f"'dimensions' must be an integer 1-{MAX_DIMENSIONS}", "dimensions")
    encoding_format = payload.get("encoding_format") or "float"
    if encoding_format not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    return EmbeddingRequest(model, texts, counts, dimensions, encoding_format)


def embeddings_response(request: EmbeddingRequest) -> dict[str, Any]:
    """The OpenAI ``list`` of ``embedding`` objects with usage."""
    data: list[dict[str, Any]] = []
    for index, text in enumerate(request.inputs):
        vector = embed(text, request.dimensions)
        encoded: Any = to_base64(vector) if request.encoding_format == "base64" else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(request.token_counts)
    return {
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
