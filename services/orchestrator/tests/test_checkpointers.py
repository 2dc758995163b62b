"""Every checkpointer Cai can be configured with passes LangGraph's conformance suite."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate

from cai_devstack.postgres import create_database, drop_database
from cai_orchestrator.checkpoint import CheckpointerError, open_checkpointer


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


def registered(url: str) -> object:
    @checkpointer_test(name=url.split(":", 1)[0])
    async def factory() -> AsyncGenerator[BaseCheckpointSaver, None]:
        async with open_checkpointer(url) as saver:
            yield saver

    return factory


# langgraph-checkpoint-redis 0.5.2 fails these upstream conformance tests. Cai does not rely on
# them (it finds a run's checkpoints by id, not by metadata); docs/architecture.md says so. A
# failure outside this set fails the test, so a regression upstream is noticed.
REDIS_KNOWN_FAILURES = {
    "list": {
        "test_list_by_namespace",
        "test_list_metadata_custom_keys",
        "test_list_before",
        "test_list_limit_plus_before",
        "test_list_multiple_namespaces",  # fails in some runs, not all
    },
    "prune": {"test_prune_keep_latest_across_namespaces", "test_prune_empty_list_noop"},
}


def failures(report: object) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, result in report.results.items():  # type: ignore[attr-defined]
        if result is not None and result.detected and result.passed is not True:
            out[str(name.value if hasattr(name, "value") else name)] = {
                str(f).split(":", 1)[0] for f in result.failures
            }
    return out


@pytest.mark.parametrize("which", ["postgres", "memory"])
async def test_checkpointer_passes_the_conformance_suite(which: str, postgres_url: str) -> None:
    url = {"postgres": postgres_url, "memory": "memory://"}[which]
    report = await validate(registered(url))  # type: ignore[arg-type]
    assert report.passed_all(), failures(report)


async def test_redis_checkpointer_passes_all_but_the_known_upstream_failures(
    redis_url: str,
) -> None:
    report = await validate(registered(redis_url))  # type: ignore[arg-type]
    found = failures(report)
    assert set(found) <= set(REDIS_KNOWN_FAILURES), found
    for capability, tests in found.items():
        assert tests <= REDIS_KNOWN_FAILURES[capability], found
    for capability in ("put", "put_writes", "get_tuple", "delete_thread"):
        assert report.results[capability].passed is True  # type: ignore[index]


async def test_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(CheckpointerError, match="redis://, postgresql:// or memory://"):
        async with open_checkpointer("mongodb://x"):
            pass
