"""The `helm test` hook: a pod that holds one real chat through the gateway.

The script is run here against a local stand-in for the gateway's LangGraph-compatible API, so
its pass/fail logic is tested; the pod wiring is checked on the render."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import chartcheck
import pytest
from charthelpers import env_of, find, one, render

SCRIPT = chartcheck.CHART / "files" / "tests" / "chat.py"
KEY = "test-key-123"


class FakeGateway(BaseHTTPRequestHandler):
    """POST /threads and POST /threads/{id}/runs/wait; the answer is set per test."""

    answer: dict[str, Any] = {}
    seen: list[tuple[str, dict[str, Any]]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeGateway.seen.append((self.path, body))
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._send(401, {"detail": "bad key"})
        if self.path == "/threads":
            return self._send(200, {"thread_id": "t-1"})
        if self.path == "/threads/t-1/runs/wait":
            return self._send(200, FakeGateway.answer)
        return self._send(404, {})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeGateway.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_script(url: str, key: str = KEY) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CAI_URL": url,
        "CAI_API_KEY": key,
        "CAI_ASSISTANT_ID": "chat",
        "CAI_TIMEOUT_SECONDS": "10",
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_passes_on_a_non_empty_ai_answer(gateway: str) -> None:
    FakeGateway.answer = {
        "messages": [
            {"type": "human", "content": "Say hello"},
            {"type": "ai", "content": "Hello there."},
        ]
    }
    result = run_script(gateway)
    assert result.returncode == 0, result.stderr
    assert "Hello there." in result.stdout
    (path, body), _ = FakeGateway.seen[1], None
    assert path == "/threads/t-1/runs/wait"
    assert body["assistant_id"] == "chat"
    assert body["input"]["messages"][0]["role"] == "user"


@pytest.mark.parametrize(
    "answer",
    [
        {"messages": [{"type": "ai", "content": "   "}]},
        {"messages": [{"type": "human", "content": "Say hello"}]},
        {"messages": []},
        {"values": {}},
    ],
    ids=["empty-ai", "no-ai", "no-messages", "wrong-shape"],
)
def test_fails_without_a_real_answer(gateway: str, answer: dict[str, Any]) -> None:
    FakeGateway.answer = answer
    assert run_script(gateway).returncode != 0


def test_fails_on_a_rejected_key(gateway: str) -> None:
    FakeGateway.answer = {"messages": [{"type": "ai", "content": "hi"}]}
    result = run_script(gateway, key="wrong")
    assert result.returncode != 0 and "401" in result.stderr


def test_content_parts_count_as_text(gateway: str) -> None:
    FakeGateway.answer = {
        "messages": [{"role": "assistant", "content": [{"type": "text", "text": "Hi!"}]}]
    }
    assert run_script(gateway).returncode == 0


def test_hook_pod_runs_the_script_with_the_test_key(default_objs: list) -> None:
    pod = one(default_objs, "Pod", "cai-test-chat")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (c,) = pod["spec"]["containers"]
    assert c["command"] == ["python", "/scripts/chat.py"]
    env = env_of(c)
    assert env["CAI_URL"] == "http://cai-gateway:8080"
    assert env["CAI_API_KEY"] == {"secretKeyRef": {"name": "cai-auth", "key": "test-api-key"}}
    cm = one(default_objs, "ConfigMap", "cai-test-chat")
    assert cm["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert cm["data"]["chat.py"].strip() == SCRIPT.read_text().strip()


def test_hook_pod_uses_the_operators_secret(production_objs: list) -> None:
    (c,) = one(production_objs, "Pod", "cai-test-chat")["spec"]["containers"]
    assert env_of(c)["CAI_API_KEY"] == {
        "secretKeyRef": {"name": "cai-api-keys", "key": "test-api-key"}
    }
    objs = render({"tests": {"enabled": False}})
    assert not find(objs, "Pod")
