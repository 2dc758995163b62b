"""One trace follows a run across every service: gateway → orchestrator → queue → worker → model
and retriever, exported over OTLP to a receiver this test runs."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from cai_devstack.fixtures import running_stack
from cai_devstack.procs import free_port
from cai_devstack.stack import Stack

Span = dict[str, object]
RETRIEVING_ASSISTANT = (
    "- id: chat\n  retrieval: {enabled: true}\n  tools: [search_knowledge_base]\n"
)


class Receiver:
    """A minimal OTLP/HTTP trace receiver collecting spans with their service name."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                request = ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    for rs in request.resource_spans:
                        service = next(
                            (a.value.string_value for a in rs.resource.attributes
                             if a.key == "service.name"), "",
                        )  # fmt: skip
                        for ss in rs.scope_spans:
                            for s in ss.spans:
                                receiver.spans.append(
                                    {
                                        "service": service,
                                        "name": s.name,
                                        "trace_id": s.trace_id.hex(),
                                        "span_id": s.span_id.hex(),
                                        "parent": s.parent_span_id.hex(),
                                        "attributes": {
                                            a.key: getattr(a.value, a.value.WhichOneof("value"))
                                            for a in s.attributes
                                        },
                                    }
                                )
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Receiver]]:
    receiver = Receiver()
    try:
        with running_stack(
            tmp_path_factory.mktemp("traced"),
            timeout=240,
            assistants=RETRIEVING_ASSISTANT,
            with_retriever=True,
            llm_sim_args=["--reply-tokens", "12"],
            service_env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
        ) as stack:
            yield stack, receiver
    finally:
        receiver.server.shutdown()


def test_one_trace_spans_every_service_with_genai_attributes(
    traced: tuple[Stack, Receiver],
) -> None:
    stack, receiver = traced
    traceparent_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{traceparent_id}-00f067aa0ba902b7-01"}
    with httpx.Client(base_url=stack.gateway_url(), timeout=60) as http:
        tid = http.post("/threads", json={}).json()["thread_id"]
        body = {"input": {"messages": [{"role": "user", "content": "How are streams resumed?"}]}}
        run = http.post(f"/threads/{tid}/runs/wait", json=body, headers=headers)
        assert run.status_code == 200, run.text

    def orphans(spans: list[Span]) -> list[object]:
        """Spans whose parent is neither in the trace nor the client's own (outside) span."""
        ids = {s["span_id"] for s in spans}
        return [s["name"] for s in spans if s["parent"] not in ids | {"00f067aa0ba902b7"}]

    def complete() -> bool:
        spans = receiver.trace(traceparent_id)
        services = {s["service"] for s in spans}
        names = {s["name"] for s in spans}
        return (
            {"cai-gateway", "cai-orchestrator", "cai-retriever"} <= services
            and "run" in names
            and any(str(n).startswith("chat ") for n in names)
            and not orphans(spans)
        )

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not complete():
        time.sleep(0.2)
    spans = receiver.trace(traceparent_id)
    services = {s["service"] for s in spans}
    assert {"cai-gateway", "cai-orchestrator", "cai-retriever"} <= services, services
    names = [str(s["name"]) for s in spans]
    assert "run" in names
    run_span = next(s for s in spans if s["name"] == "run")
    assert run_span["attributes"]["cai.thread_id"] == tid  # type: ignore[index]
    chat = next(s for s in spans if str(s["name"]).startswith("chat "))
    attributes = chat["attributes"]
    assert attributes["gen_ai.operation.name"] == "chat"  # type: ignore[index]
    assert attributes["gen_ai.provider.name"] == "openai"  # type: ignore[index]
    assert attributes["gen_ai.request.model"]  # type: ignore[index]
    assert attributes["gen_ai.usage.output_tokens"] > 0  # type: ignore[index,operator]
    assert attributes["gen_ai.conversation.id"] == tid  # type: ignore[index]
    assert any(n == "execute_tool search_knowledge_base" for n in names)
    assert not orphans(spans)  # one connected trace under the client's traceparent


def _sample_names(text: str) -> set[str]:
    return {
        line.split("{", 1)[0].split(" ", 1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_every_metric_the_dashboard_and_alerts_query_is_exported(
    traced: tuple[Stack, Receiver],
) -> None:
    stack, _ = traced
    with httpx.Client(base_url=stack.gateway_url(), timeout=60) as http:
        tid = http.post("/threads", json={}).json()["thread_id"]
        body = {
            "input": {"messages": [{"role": "user", "content": "How are streams resumed?"}]},
            "stream_mode": "messages-tuple",
        }
        with http.stream("POST", f"/threads/{tid}/runs/stream", json=body) as response:
            assert b"event: end" in b"".join(response.iter_bytes())
    scraped = set()
    for url in (
        f"http://127.0.0.1:{stack.config.gateway_metrics_port}/metrics",
        f"http://127.0.0.1:{stack.config.orchestrator_metrics_port}/metrics",
        f"http://127.0.0.1:{stack.config.retriever_metrics_port}/metrics",
    ):
        scraped |= _sample_names(httpx.get(url).text)
    chart = Path(__file__).parents[2] / "charts" / "cai" / "files"
    queried = set()
    for path in [*chart.glob("dashboards/*.json"), *chart.glob("alerts/*.yaml")]:
        queried |= set(re.findall(r"\bcai_[a-z0-9_]+", path.read_text()))
    assert queried, "the chart's dashboard and alerts query no cai_ metric"
    missing = sorted(queried - scraped)
    assert not missing, f"queried but not exported: {missing}"


def test_logs_are_json_with_run_thread_and_trace_ids(traced: tuple[Stack, Receiver]) -> None:
    stack, _ = traced
    log = stack.config.run_dir / "logs" / "orchestrator.log"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    finished = [r for r in records if r.get("message") == "run finished"]
    assert finished
    for record in finished:
        assert record["run_id"] and record["thread_id"] and record["tenant"]
        assert len(record["trace_id"]) == 32 and len(record["span_id"]) == 16


def test_no_service_log_holds_the_message_text(traced: tuple[Stack, Receiver]) -> None:
    stack, _ = traced
    secret = f"my locker code is {uuid.uuid4().hex}"
    with httpx.Client(base_url=stack.gateway_url(), timeout=60) as http:
        tid = http.post("/threads", json={}).json()["thread_id"]
        body = {"input": {"messages": [{"role": "user", "content": secret}]}}
        assert http.post(f"/threads/{tid}/runs/wait", json=body).status_code == 200
        # The prompt reached the model and the thread: the text was there to be logged.
        messages = http.get(f"/threads/{tid}/state").json()["values"]["messages"]
    assert messages[0]["content"] == secret
    logs = stack.config.run_dir / "logs"
    services = ["gateway.log", "orchestrator.log", "retriever.log"]

    def logged_the_finished_run() -> bool:
        lines = (logs / "orchestrator.log").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        return any(
            r.get("message") == "run finished" and r.get("thread_id") == tid for r in records
        )

    deadline = time.monotonic() + 20
    while not logged_the_finished_run():
        assert time.monotonic() < deadline, "the orchestrator never logged the run"
        time.sleep(0.1)
    for name in services:
        assert secret.split()[-1] not in (logs / name).read_text(), f"{name} logs message text"
