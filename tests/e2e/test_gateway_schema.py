"""Property-based checks of the gateway against its own OpenAPI document (schemathesis): for
valid and invalid inputs alike, no 5xx, only documented status codes and content types."""

from __future__ import annotations

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.support import KEYS

EXAMPLES = {GenerationMode.POSITIVE: 10, GenerationMode.NEGATIVE: 8}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_no_server_errors_and_responses_match_the_schema(gw: str) -> None:
    schema = schemathesis.openapi.from_url(f"{gw}/openapi.json")
    headers = {"X-Api-Key": KEYS.fuzz}
    session = requests.Session()
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode, examples in EXAMPLES.items():

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                nonlocal calls
                calls += 1
                case.call_and_validate(
                    base_url=gw, session=session, headers=headers, checks=CHECKS, timeout=30
                )

            try:
                check()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # no parameters: nothing to get wrong
            except Exception as exc:  # collect every operation's failure, then report them all
                failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:1500]}")
    assert calls > 300, calls
    assert not failures, "\n\n".join(failures)
