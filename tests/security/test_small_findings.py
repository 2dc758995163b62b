"""Finding 11, the smaller items, one test (or two) each:

* JSON nested ~300 levels deep was a 500: it is a 422.
* A removed or unreadable keys file left the old keys valid: the gateway fails closed (and logs it).
* `max_concurrent_streams: 0` meant unlimited: it is refused, per key and gateway-wide.
* (A Redis write of run events resent after a lost reply: tests/security/test_event_writes.py.)
* No audit trail: every request is logged with its key id, subject and tenant, never the key.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cai_devstack.procs import Proc, free_port, http_ready
from cai_devstack.stack import Stack
from cai_gateway.auth import hash_key
from tests.e2e.support import eventually
from tests.security.support import KEYS


def client(base: str, key: str = KEYS.red) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, headers={"X-Api-Key": key}, timeout=30)


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"down": value}
    return value


# -- deep JSON -----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["thread metadata", "run input", "run config"])
async def test_json_nested_300_levels_deep_is_a_422_not_a_500(sec: str, where: str) -> None:
    deep = nested(300)
    async with client(sec) as http:
        if where == "thread metadata":
            response = await http.post("/threads", json={"metadata": deep})
        elif where == "run input":
            body = {"assistant_id": "chat", "input": {"messages": [], "extra": deep}}
            response = await http.post("/runs", json=body)
        else:
            body = {"assistant_id": "chat", "input": {"messages": []}, "config": deep}
            response = await http.post("/runs/wait", json=body)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "nested more than 64 levels" in response.json()["detail"]
        # Deep enough for any real request still passes.
        ok = await http.post("/threads", json={"metadata": nested(40)})
        assert ok.status_code == 200, ok.text


# -- gateways of their own (keys file, settings) -------------------------------------------------


@contextlib.contextmanager
def gateway(stack: Stack, tmp: Path, keys_file: Path, **env: str) -> Iterator[tuple[str, Proc]]:
    """Another gateway in front of the security stack's orchestrator, with its own keys file."""
    template = stack.gateway_proc(0)
    port = free_port()
    proc = Proc(
        f"gateway-{port}",
        template.cmd,
        tmp / f"gateway-{port}.log",
        env={
            **template.env,
            "API_KEYS_FILE": str(keys_file),
            "GATEWAY_PORT": str(port),
            "GATEWAY_METRICS_PORT": str(free_port()),
            **env,
        },
        ready=http_ready(f"http://127.0.0.1:{port}/readyz"),
    ).start()
    try:
        proc.wait_ready(60)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.stop()


def refused_at_start_up(stack: Stack, tmp: Path, keys_file: Path, **env: str) -> str:
    """Start a gateway that must refuse to start; its log."""
    template = stack.gateway_proc(0)
    proc = Proc(
        "gateway-refused",
        template.cmd,
        tmp / "gateway-refused.log",
        env={
            **template.env,
            "API_KEYS_FILE": str(keys_file),
            "GATEWAY_PORT": str(free_port()),
            "GATEWAY_METRICS_PORT": str(free_port()),
            **env,
        },
    ).start()
    try:
        assert proc.popen is not None
        returncode = proc.popen.wait(timeout=60)
    finally:
        proc.stop()
    log = proc.log_path.read_text(errors="replace")
    assert returncode != 0, log
    return log


def one_key_file(path: Path, extra: str = "") -> Path:
    path.write_text(
        f'keys:\n  - {{id: solo, tenant: solo, sha256: "{hash_key(KEYS.red)}"{extra}}}\n'
    )
    return path


async def status_with(base: str, key: str) -> int:
    async with client(base, key) as http:
        return (await http.get("/v1/models")).status_code


# -- the keys file fails closed ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["removed", "unreadable"])
async def test_a_keys_file_that_goes_away_leaves_no_key_valid(
    sec_stack: Stack, tmp_path: Path, how: str
) -> None:
    keys_file = one_key_file(tmp_path / "api-keys.yaml")
    saved = keys_file.read_text()
    with gateway(sec_stack, tmp_path, keys_file, API_KEYS_RELOAD_SECONDS="0.1") as (base, proc):
        assert await status_with(base, KEYS.red) == 200
        keys_file.unlink()
        if how == "unreadable":
            keys_file.mkdir()  # reading it fails (root reads any file whatever its mode)

        async def refused() -> bool:
            return await status_with(base, KEYS.red) == 401

        await eventually(refused, timeout=10, what="the key stops working")
        log = proc.log_path.read_text(errors="replace")
        assert "API keys file unreadable; no API key is valid until it is back" in log
        assert KEYS.red not in log

        if how == "unreadable":
            shutil.rmtree(keys_file)
        keys_file.write_text(saved)

        async def accepted() -> bool:
            return await status_with(base, KEYS.red) == 200

        await eventually(accepted, timeout=10, what="the key works again once the file is back")


# -- no unlimited streams ------------------------------------------------------------------------


def test_a_key_with_max_concurrent_streams_0_is_refused(sec_stack: Stack, tmp_path: Path) -> None:
    keys_file = one_key_file(tmp_path / "api-keys.yaml", ", max_concurrent_streams: 0")
    log = refused_at_start_up(sec_stack, tmp_path, keys_file)
    assert "keys.0.max_concurrent_streams" in log and "greater than or equal to 1" in log, log


def test_max_concurrent_streams_0_is_refused_gateway_wide(sec_stack: Stack, tmp_path: Path) -> None:
    keys_file = one_key_file(tmp_path / "api-keys.yaml")
    log = refused_at_start_up(sec_stack, tmp_path, keys_file, MAX_CONCURRENT_STREAMS="0")
    assert "max_concurrent_streams" in log and "greater than or equal to 1" in log, log


# -- the access log ------------------------------------------------------------------------------


def access_lines(stack: Stack) -> list[dict[str, Any]]:
    lines = []
    for line in stack.procs["gateway"].log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            entry = json.loads(line)
            if entry.get("logger") == "cai_gateway.access":
                lines.append(entry)
    return lines


async def test_every_request_is_logged_with_key_id_subject_and_tenant_never_the_key(
    sec_stack: Stack, sec: str
) -> None:
    marker = str(uuid.uuid4())
    bogus = f"bogus-key-{uuid.uuid4()}"
    async with client(sec, KEYS.red) as red, client(sec, KEYS.blue) as blue:
        assert (await red.get(f"/threads/{marker}")).status_code == 404
        assert (await blue.get(f"/threads/{marker}", params={"who": "blue"})).status_code == 404
    async with client(sec, bogus) as stranger:
        assert (await stranger.get(f"/threads/{marker}")).status_code == 401

    def mine() -> list[dict[str, Any]]:
        return [e for e in access_lines(sec_stack) if marker in e.get("path", "")]

    await eventually(lambda: len(mine()) == 3, what="three access log lines")
    by_key = {e.get("key_id"): e for e in mine()}
    red_line, blue_line, refused = by_key["red"], by_key["blue"], by_key[None]
    assert (red_line["key_id"], red_line["subject"], red_line["tenant"]) == (
        "red",
        "red-team",
        "red",
    )
    assert (blue_line["key_id"], blue_line["subject"], blue_line["tenant"]) == (
        "blue",
        "blue",  # no subject in the keys file: the key's id
        "blue",
    )
    for line in (red_line, blue_line):
        assert line["method"] == "GET" and line["status"] == 404
        assert line["route"] == "/threads/{thread_id}" and line["duration_ms"] >= 0
    assert refused["status"] == 401 and refused["key_id"] is None
    log = sec_stack.procs["gateway"].log_path.read_text(errors="replace")
    for secret in (KEYS.red, KEYS.blue, bogus):
        assert secret not in log
