"""The store's Qdrant-server code path (no Qdrant server binary is available offline): the calls it
makes are recorded and checked, since local mode ignores indexes and HNSW settings."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from qdrant_client import models

from cai_retriever.store import VectorStore, tenant_filter


class RecordingClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.created = False

    async def call(self, method: str, **kwargs: Any) -> Any:
        self.calls.append((method, kwargs))
        if method == "collection_exists":
            return self.created
        if method == "create_collection":
            self.created = True
        if method == "get_collection":
            vectors = models.VectorParams(size=384, distance=models.Distance.COSINE)
            return SimpleNamespace(config=SimpleNamespace(params=SimpleNamespace(vectors=vectors)))
        return None

    async def close(self) -> None:
        pass


async def test_server_mode_creates_tenant_aware_collection_and_indexes() -> None:
    store = VectorStore(url="http://qdrant:6333", metadata_index_fields=["lang"])
    client = RecordingClient()
    store._client = client  # type: ignore[assignment]
    await store.ensure_collection("docs", 384)
    await store.ensure_collection("docs", 384)  # exists now: nothing created twice

    created = [kw for m, kw in client.calls if m == "create_collection"]
    assert len(created) == 1
    assert created[0]["vectors_config"].size == 384
    assert created[0]["vectors_config"].distance == models.Distance.COSINE
    assert (created[0]["hnsw_config"].m, created[0]["hnsw_config"].payload_m) == (0, 16)

    indexes = {
        kw["field_name"]: kw["field_schema"]
        for m, kw in client.calls
        if m == "create_payload_index"
    }
    assert set(indexes) == {
        "tenant_id",
        "document_id",
        "chunk_index",
        "source",
        "content_type",
        "metadata.lang",
    }
    assert indexes["tenant_id"].is_tenant is True
    assert indexes["chunk_index"] == models.PayloadSchemaType.INTEGER


def test_tenant_filter_always_pins_the_tenant() -> None:
    selector = tenant_filter("acme", ["d1"], {"tenant_id": "other", "lang": "fr", "source": "s"})
    assert isinstance(selector.must, list)
    keys = [(c.key, c.match) for c in selector.must]  # type: ignore[union-attr]
    assert keys[0] == ("tenant_id", models.MatchValue(value="acme"))
    assert ("document_id", models.MatchAny(any=["d1"])) in keys
    # A filter key named tenant_id is a metadata key: it can only narrow, never replace the tenant.
    assert ("metadata.tenant_id", models.MatchValue(value="other")) in keys
    assert ("metadata.lang", models.MatchValue(value="fr")) in keys
    assert ("source", models.MatchValue(value="s")) in keys
    assert selector.should is None and selector.must_not is None
