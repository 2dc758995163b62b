"""The gateway app in-process (real Redis, a fake orchestrator): auth, limits, body size, problem
details, the OpenAPI document."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from fastapi import FastAPI
from prometheus_client import generate_latest

from cai.v1 import orchestrator_pb2 as pb
from cai_gateway.app import create_app
from cai_gateway.auth import hash_key
from cai_gateway.config import Settings
from cai_gateway.problems import from_rpc_error

KEY_A = "key-of-tenant-a"
KEY_B = "key-of-tenant-b"
THREAD = "6f1c1f3e-9c2b-4a52-9a51-2f9f7f0a6a11"


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class FakeOrchestrator:
    """Threads owned by tenants; the calls the tests make. Records the principals it saw."""

    def __init__(self) -> None:
        self.threads = {THREAD: "tenant-a"}
        self.principals: list[str] = []
        self.fail_with: grpc.StatusCode | None = None

    def _check(self, request: Any) -> None:
        self.principals.append(request.principal.tenant_id)
        if self.fail_with is not None:
            raise rpc_error(self.fail_with, "boom")

    async def GetThread(self, request: pb.GetThreadRequest, timeout: float) -> pb.JsonReply:
        self._check(request)
        if self.threads.get(request.thread_id) != request.principal.tenant_id:
            raise rpc_error(grpc.StatusCode.NOT_FOUND, f"Thread {request.thread_id} not found")
        return pb.JsonReply(json=orjson.dumps({"thread_id": request.thread_id}))

    async def CreateThread(self, request: pb.CreateThreadRequest, timeout: float) -> pb.JsonReply:
        self._check(request)
        return pb.JsonReply(json=orjson.dumps({"thread_id": str(uuid.uuid4())}))

    async def SearchAssistants(
        self, request: pb.SearchAssistantsRequest, timeout: float
    ) -> pb.JsonReply:
        self._check(request)
        return pb.JsonReply(json=b'[{"assistant_id":"chat","created_at":"2026-01-01T00:00:00"}]')


@pytest.fixture
def keys_path(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(
        "keys:\n"
        f'  - {{id: a, tenant: tenant-a, sha256: "{hash_key(KEY_A)}"}}\n'
        f'  - {{id: b, tenant: tenant-b, sha256: "{hash_key(KEY_B)}", rate_limit_per_second: 1,'
        " rate_limit_burst: 2}\n"
    )
    return path


AppFactory = Callable[..., Any]


@pytest.fixture
async def make_app(redis_url: str, keys_path: Path) -> AsyncIterator[Callable[..., Any]]:
    stack: list[Any] = []

    async def make(**overrides: Any) -> tuple[FastAPI, httpx.AsyncClient, FakeOrchestrator]:
        fields: dict[str, Any] = {
            "api_keys_file": str(keys_path),
            "redis_url": redis_url,
            "orchestrator_addr": "127.0.0.1:1",
        }
        settings = Settings(**{**fields, **overrides})
        app = create_app(settings)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        fake = FakeOrchestrator()
        app.state.orchestrator = fake
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
        stack.append((lifespan, http))
        return app, http, fake

    yield make
    for lifespan, http in stack:
        await http.aclose()
        await lifespan.__aexit__(None, None, None)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    assert "Traceback" not in response.text
    return body


async def test_no_key_bad_key_and_keys_of_two_tenants(make_app: AppFactory) -> None:
    _, http, fake = await make_app()
    missing = await http.get(f"/threads/{THREAD}")
    assert_problem(missing, 401)
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert_problem(await http.get(f"/threads/{THREAD}", headers={"X-Api-Key": "nope"}), 401)
    assert_problem(
        await http.get(f"/threads/{THREAD}", headers={"Authorization": f"Basic {KEY_A}"}), 401
    )
    assert fake.principals == []  # nothing unauthenticated reached the orchestrator
    ok = await http.get(f"/threads/{THREAD}", headers={"Authorization": f"Bearer {KEY_A}"})
    assert ok.status_code == 200 and ok.json() == {"thread_id": THREAD}
    ok = await http.get(f"/threads/{THREAD}", headers={"X-Api-Key": KEY_A})
    assert ok.status_code == 200
    other = await http.get(f"/threads/{THREAD}", headers={"X-Api-Key": KEY_B})
    assert_problem(other, 404)
    assert fake.principals == ["tenant-a", "tenant-a", "tenant-b"]


async def test_anonymous_only_when_allowed(make_app: AppFactory) -> None:
    _, http, fake = await make_app(allow_anonymous=True, anonymous_tenant="tenant-a")
    assert (await http.get(f"/threads/{THREAD}")).status_code == 200
    # An unknown key (the OpenAI SDK always sends one) acts as anonymous too.
    assert (await http.get(f"/threads/{THREAD}", headers={"X-Api-Key": "x"})).status_code == 200
    assert (await http.get(f"/threads/{THREAD}", headers={"X-Api-Key": KEY_B})).status_code == 404
    assert fake.principals == ["tenant-a", "tenant-a", "tenant-b"]


async def test_per_key_rate_limit_answers_429_with_retry_after(make_app: AppFactory) -> None:
    app, http, _ = await make_app()
    app.state.limiter.prefix = f"test:{uuid.uuid4().hex}"
    headers = {"X-Api-Key": KEY_B}  # 1 request/s, bursts of 2
    statuses = [(await http.get(f"/threads/{THREAD}", headers=headers)) for _ in range(3)]
    assert [r.status_code for r in statuses] == [404, 404, 429]
    body = assert_problem(statuses[-1], 429)
    assert statuses[-1].headers["retry-after"] == "1" and body["retry_after"] == 1
    # The other key is not affected.
    assert (await http.get(f"/threads/{THREAD}", headers={"X-Api-Key": KEY_A})).status_code == 200
    # Unauthenticated requests never reach the limiter (no 429 instead of a 401).
    assert (await http.get(f"/threads/{THREAD}")).status_code == 401


async def test_rate_limits_fail_open_when_redis_is_down(make_app: AppFactory) -> None:
    _, http, _ = await make_app(redis_url="redis://127.0.0.1:1/0", rate_limit_burst=1)
    for _ in range(3):
        assert (
            await http.get(f"/threads/{THREAD}", headers={"X-Api-Key": KEY_A})
        ).status_code == 200


async def test_rate_limits_fail_closed_with_503_when_asked(make_app: AppFactory) -> None:
    _, http, _ = await make_app(redis_url="redis://127.0.0.1:1/0", limits_fail_open=False)
    response = await http.get(f"/threads/{THREAD}", headers={"X-Api-Key": KEY_A})
    assert_problem(response, 503)
    assert response.headers["retry-after"] == "2"


async def test_body_limit_by_content_length_and_while_reading(make_app: AppFactory) -> None:
    _, http, fake = await make_app(max_body_bytes=1000)
    headers = {"X-Api-Key": KEY_A, "Content-Type": "application/json"}
    big = orjson.dumps({"metadata": {"x": "y" * 2000}})
    assert_problem(await http.post("/threads", content=big, headers=headers), 413)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    assert_problem(await http.post("/threads", content=chunked(), headers=headers), 413)
    small = orjson.dumps({"metadata": {"x": "y"}})
    assert (await http.post("/threads", content=small, headers=headers)).status_code == 200
    assert fake.principals == ["tenant-a"]


async def test_bad_content_length_is_a_400(make_app: AppFactory) -> None:
    app, _, _ = await make_app()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/threads", "raw_path": b"/threads",
        "query_string": b"", "headers": [(b"content-length", b"12abc")], "http_version": "1.1",
        "scheme": "http", "server": ("gw", 80), "client": ("c", 1), "root_path": "",
    }  # fmt: skip
    await app(scope, receive, send)
    assert sent[0]["status"] == 400


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.PERMISSION_DENIED, 404),
        (grpc.StatusCode.INVALID_ARGUMENT, 422),
        (grpc.StatusCode.FAILED_PRECONDITION, 409),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INTERNAL, 502),
        (grpc.StatusCode.UNKNOWN, 502),
    ],
)
async def test_orchestrator_errors_become_problems(
    make_app: AppFactory, code: grpc.StatusCode, status: int
) -> None:
    _, http, fake = await make_app()
    fake.fail_with = code
    response = await http.get(f"/threads/{THREAD}", headers={"X-Api-Key": KEY_A})
    body = assert_problem(response, status)
    if status == 502:
        assert "boom" not in body["detail"]  # internal details stay in the log
    if status == 503:
        assert response.headers["retry-after"] == "1"


def test_from_rpc_error_keeps_client_error_details() -> None:
    problem = from_rpc_error(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "limit must be 1..1000"))
    assert (problem.status, problem.detail) == (422, "limit must be 1..1000")


def test_a_quota_refusal_is_429_with_retry_after_and_a_size_limit_413() -> None:
    quota = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("retry-after", "5")),
        "Too many runs",
    )
    problem = from_rpc_error(quota)
    assert (problem.status, problem.headers, problem.extra) == (
        429,
        {"Retry-After": "5"},
        {"retry_after": 5},
    )
    too_large = from_rpc_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "state too large"))
    assert too_large.status == 413


async def test_validation_errors_and_unknown_routes_are_problems(make_app: AppFactory) -> None:
    _, http, _ = await make_app()
    headers = {"X-Api-Key": KEY_A}
    body = assert_problem(await http.get("/threads/not-a-uuid", headers=headers), 422)
    assert body["errors"][0]["loc"] == ["path", "thread_id"]
    assert_problem(await http.get("/nowhere", headers=headers), 404)
    assert_problem(await http.put(f"/threads/{THREAD}", headers=headers), 405)
    bad_mode = await http.post(
        f"/threads/{THREAD}/runs/stream",
        json={"input": {}, "stream_mode": ["events"]},
        headers=headers,
    )
    assert "not supported" in assert_problem(bad_mode, 422)["detail"]


async def test_openai_routes_carry_openai_error_objects(make_app: AppFactory) -> None:
    _, http, _ = await make_app()
    body = assert_problem(await http.get("/v1/models"), 401)
    assert body["error"]["type"] == "authentication_error" and body["error"]["message"]
    models = await http.get("/v1/models", headers={"Authorization": f"Bearer {KEY_A}"})
    assert models.json()["data"][0]["id"] == "chat" and models.json()["object"] == "list"


async def test_cors_preflight_for_configured_origins_only(make_app: AppFactory) -> None:
    _, http, _ = await make_app(cors_origins="https://app.example.com, https://b.example.com")
    preflight = {"Access-Control-Request-Method": "POST"}
    ok = await http.options("/threads", headers={**preflight, "Origin": "https://b.example.com"})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://b.example.com"
    refused = await http.options("/threads", headers={**preflight, "Origin": "https://evil.test"})
    assert "access-control-allow-origin" not in refused.headers


async def test_openapi_documents_media_types_errors_and_security(make_app: AppFactory) -> None:
    app, http, _ = await make_app(public_docs=True)
    doc = (await http.get("/openapi.json")).json()
    paths = doc["paths"]
    for path in (
        "/threads/{thread_id}/runs/stream",
        "/runs/stream",
        "/threads/{thread_id}/runs/{run_id}/stream",
        "/chat/{task_id}/stream",
    ):
        operation = next(iter(paths[path].values()))
        assert list(operation["responses"]["200"]["content"]) == ["text/event-stream"], path
    completions = paths["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(completions) == {"application/json", "text/event-stream"}
    for path, item in paths.items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert list(response["content"]) == ["application/problem+json"], (path, status)
            if not path.startswith(("/healthz", "/readyz")):
                assert {"401", "422", "429"} <= set(operation["responses"]), (method, path)
    schemes = doc["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}


def test_every_route_has_a_one_line_docstring() -> None:
    doc = create_app(Settings(redis_url="")).openapi()
    operations = [(p, o) for p, item in doc["paths"].items() for o in item.values()]
    assert len(operations) > 30
    for path, operation in operations:
        description = operation.get("description", "")
        assert description and description.endswith("."), path


async def test_requests_are_counted_by_route_template(make_app: AppFactory) -> None:
    _, http, _ = await make_app()
    await http.get(f"/threads/{THREAD}", headers={"X-Api-Key": KEY_A})
    metrics = generate_latest().decode()  # served on GATEWAY_METRICS_PORT, not by the app
    assert 'cai_http_requests_total{method="GET",route="/threads/{thread_id}",status="200"}' in (
        metrics
    )
    assert THREAD not in metrics


async def test_lone_surrogates_in_json_are_a_422_not_a_500(make_app: AppFactory) -> None:
    _, http, fake = await make_app()
    body = b'{"metadata": {"\\udaab": 1}}'
    response = await http.post(
        "/threads", content=body, headers={"X-Api-Key": KEY_A, "Content-Type": "application/json"}
    )
    assert_problem(response, 422)
    ok = b'{"metadata": {"\\ud83d\\ude00": 1}}'  # a valid surrogate pair is fine
    response = await http.post(
        "/threads", content=ok, headers={"X-Api-Key": KEY_A, "Content-Type": "application/json"}
    )
    assert response.status_code == 200 and fake.principals == ["tenant-a"]


async def test_docs_and_openapi_need_no_key(make_app: AppFactory) -> None:
    _, http, _ = await make_app(public_docs=True)
    docs = await http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert (await http.get("/openapi.json")).status_code == 200
    assert (await http.get("/healthz")).json() == {"status": "ok"}
