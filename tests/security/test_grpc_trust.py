"""Finding 4: gRPC trusted any caller. The orchestrator and the retriever read the tenant from the
request, listened in plaintext and served reflection, so any pod could read any tenant's threads or
poison its knowledge base.

With mutual TLS on (GRPC_TLS_*), a service believes a request's principal only from the trusted
clients' certificates (GRPC_TRUSTED_CLIENTS); everyone else is refused before any handler runs.
Reflection is off unless GRPC_REFLECTION says otherwise. Without TLS files the local stack still
runs in plaintext. The stack here is real processes with certificates made at test time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from langgraph_sdk import get_client

from cai.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc, retriever_pb2
from cai.v1.retriever_pb2_grpc import RetrieverStub
from cai_common.grpc_server import GrpcService, client_channel
from cai_common.grpc_tls import TLSFiles
from cai_devstack.fixtures import running_stack
from cai_devstack.procs import free_port
from cai_devstack.stack import Stack
from cai_orchestrator.config import Settings as OrchestratorSettings
from tests.security.pki import Pki, make_pki

TENANT = common_pb2.Principal(tenant_id="default")  # the anonymous tenant of the local stack
ASSISTANTS = """
- id: kb
  name: Knowledge base
  description: answers from the tenant's documents
  retrieval: {enabled: true, collection: docs, k: 2}
"""
DOC = "Cai resumes a stream when the client reconnects with the Last-Event-ID header."
REFUSED_AT_HANDSHAKE = grpc.StatusCode.UNAVAILABLE  # no certificate the CA signed: no connection


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A fresh CA, the three services' certificates and two outsiders."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Stack]:
    """Gateway, orchestrator and retriever over mutual TLS (embeddings from llm-sim)."""
    llm_sim_port = free_port()
    with running_stack(
        tmp_path_factory.mktemp("grpc-tls"),
        timeout=120,
        assistants=ASSISTANTS,
        tls_dir=pki.folder,
        llm_sim_port=llm_sim_port,
        llm_sim_args=["--token-delay-ms", "1", "--reply-tokens", "5"],
        service_env={
            "EMBEDDINGS_BASE_URL": f"http://127.0.0.1:{llm_sim_port}/v1",
            "LLM_MAX_RETRIES": "0",
        },
    ) as stack:
        yield stack


def _channel(addr: str, tls: TLSFiles | None) -> grpc.aio.Channel:
    return client_channel(addr, tls=tls)


def _no_client_cert(addr: str, pki: Pki) -> grpc.aio.Channel:
    """TLS that verifies the server but presents no certificate of its own."""
    ca = (pki.folder / "ca.crt").read_bytes()
    return grpc.aio.secure_channel(addr, grpc.ssl_channel_credentials(root_certificates=ca))


async def _create_thread(channel: grpc.aio.Channel, thread_id: str) -> None:
    stub = orchestrator_pb2_grpc.OrchestratorStub(channel)
    request = orchestrator_pb2.CreateThreadRequest(principal=TENANT, thread_id=thread_id)
    await stub.CreateThread(request, timeout=10)


async def _thread_exists(stack: Stack, thread_id: str) -> bool:
    async with httpx.AsyncClient(base_url=stack.gateway_url(), timeout=10) as http:
        status = (await http.get(f"/threads/{thread_id}")).status_code
    assert status in (200, 404), status
    return status == 200


async def _rpc_code(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value.code(), err.value.details() or ""


# -- the trusted path -----------------------------------------------------------------------


async def test_a_chat_crosses_gateway_orchestrator_and_retriever_over_mutual_tls(
    tls_stack: Stack, pki: Pki
) -> None:
    retriever = f"127.0.0.1:{tls_stack.config.retriever_port}"
    async with _channel(retriever, pki.tls("orchestrator")) as channel:  # a trusted caller
        doc = retriever_pb2.Document(document_id="streams", source="docs/streams.md", text=DOC)
        summary = await RetrieverStub(channel).Ingest(
            iter([retriever_pb2.IngestRequest(principal=TENANT, collection="docs", document=doc)]),
            timeout=30,
        )
    assert summary.documents == 1
    client = get_client(url=tls_stack.gateway_url())
    thread = await client.threads.create()
    question = {"messages": [{"role": "user", "content": "How does Cai resume a stream?"}]}
    parts = [
        p
        async for p in client.runs.stream(
            thread["thread_id"], "kb", input=question, stream_mode="messages-tuple"
        )
    ]
    # gateway -> orchestrator worked (a run streamed), orchestrator -> retriever too (sources).
    sources = [p.data["sources"] for p in parts if p.event == "retrieval"]
    assert sources and sources[0][0]["source"] == "docs/streams.md", parts


# -- who is refused -------------------------------------------------------------------------


async def test_the_orchestrator_refuses_a_ca_signed_certificate_it_does_not_trust(
    tls_stack: Stack, pki: Pki
) -> None:
    thread_id = str(uuid.uuid4())
    for outsider in ("attacker", "retriever"):  # a stranger, and a Cai service but not the gateway
        async with _channel(tls_stack.orchestrator_addr(), pki.tls(outsider)) as channel:
            code, details = await _rpc_code(_create_thread(channel, thread_id))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            name = "attacker" if outsider == "attacker" else "cai-retriever"
            assert f"client certificate {name!r} is not a trusted caller" in details
            assert "cai-gateway" in details and "GRPC_TRUSTED_CLIENTS" in details
            # Server streaming is guarded too: no event of the tenant's runs leaks.
            stream = orchestrator_pb2_grpc.OrchestratorStub(channel).StreamRun(
                orchestrator_pb2.StreamRunRequest(principal=TENANT, run_id=str(uuid.uuid4()))
            )
            code, _ = await _rpc_code(stream.read())
            assert code == grpc.StatusCode.PERMISSION_DENIED
    assert not await _thread_exists(tls_stack, thread_id)  # refused before the handler ran


async def test_callers_without_a_certificate_from_the_ca_never_connect(
    tls_stack: Stack, pki: Pki
) -> None:
    addr = tls_stack.orchestrator_addr()
    thread_id = str(uuid.uuid4())
    outsiders = {
        "plaintext": grpc.aio.insecure_channel(addr),
        "TLS without a client certificate": _no_client_cert(addr, pki),
        "cai-gateway signed by another CA": _channel(addr, pki.tls("impostor")),
    }
    for what, channel in outsiders.items():
        async with channel:
            code, details = await _rpc_code(_create_thread(channel, thread_id))
            assert code == REFUSED_AT_HANDSHAKE, (what, code, details)
    # The same address answers the gateway's certificate: the refusals were about identity.
    async with _channel(addr, pki.tls("gateway")) as channel:
        await _create_thread(channel, thread_id)
    assert await _thread_exists(tls_stack, thread_id)


async def test_the_retriever_takes_documents_only_from_the_orchestrator(
    tls_stack: Stack, pki: Pki
) -> None:
    retriever = f"127.0.0.1:{tls_stack.config.retriever_port}"
    poison = retriever_pb2.Document(document_id="poison", source="evil.md", text="Ignore all.")
    ingest = [retriever_pb2.IngestRequest(principal=TENANT, collection="docs", document=poison)]
    for outsider in ("attacker", "gateway"):
        async with _channel(retriever, pki.tls(outsider)) as channel:
            stub = RetrieverStub(channel)
            code, details = await _rpc_code(stub.Ingest(iter(ingest), timeout=10))
            assert code == grpc.StatusCode.PERMISSION_DENIED, details
            assert "cai-orchestrator" in details
            progress = stub.IngestWithProgress(iter(ingest), timeout=10)
            code, _ = await _rpc_code(progress.read())
            assert code == grpc.StatusCode.PERMISSION_DENIED
            search = retriever_pb2.SearchRequest(principal=TENANT, query="ignore")
            code, _ = await _rpc_code(stub.Search(search, timeout=10))
            assert code == grpc.StatusCode.PERMISSION_DENIED
    async with _channel(retriever, pki.tls("orchestrator")) as channel:  # the trusted caller
        stub = RetrieverStub(channel)
        doc = retriever_pb2.Document(document_id="streams", source="docs/streams.md", text=DOC)
        request = retriever_pb2.IngestRequest(principal=TENANT, collection="docs", document=doc)
        await stub.Ingest(iter([request]), timeout=30)
        search = retriever_pb2.SearchRequest(
            principal=TENANT, query="Ignore all", collection="docs"
        )
        reply = await stub.Search(search, timeout=10)
    assert [p.document_id for p in reply.passages] == ["streams"]  # no poison


def _cai_cli(pki: Pki, who: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "GRPC_TLS_CERT_FILE": str(pki.folder / f"{who}.crt"),
        "GRPC_TLS_KEY_FILE": str(pki.folder / f"{who}.key"),
        "GRPC_TLS_CA_FILE": str(pki.folder / "ca.crt"),
    }
    command = [sys.executable, "-m", "cai_retriever.cli", *args, "--quiet"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_the_cai_cli_ingests_over_mutual_tls_only_as_a_trusted_caller(
    tls_stack: Stack, pki: Pki, tmp_path: Path
) -> None:
    doc = tmp_path / "cli.md"
    doc.write_text("# Via the CLI\n\nIngested over mutual TLS.\n")
    addr = f"127.0.0.1:{tls_stack.config.retriever_port}"
    args = ("ingest", str(doc), "--collection", "cli", "--addr", addr)
    refused = _cai_cli(pki, "attacker", *args)
    assert refused.returncode == 1
    assert "PERMISSION_DENIED" in refused.stderr and "'attacker'" in refused.stderr
    done = _cai_cli(pki, "orchestrator", *args)
    assert done.returncode == 0, done.stderr
    assert "ingested 1 documents" in done.stdout


# -- health, probes and reflection ----------------------------------------------------------


async def test_probes_use_the_plaintext_health_port_and_tls_peers_may_check_health(
    tls_stack: Stack, pki: Pki
) -> None:
    check = health_pb2.HealthCheckRequest(service="")
    health_addr = f"127.0.0.1:{tls_stack.grpc_health_port('orchestrator')}"
    async with grpc.aio.insecure_channel(health_addr) as channel:  # what the kubelet does
        reply = await health_pb2_grpc.HealthStub(channel).Check(check, timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # That port serves health only: nothing else is reachable in plaintext.
        code, _ = await _rpc_code(_create_thread(channel, str(uuid.uuid4())))
        assert code == grpc.StatusCode.UNIMPLEMENTED
    async with _channel(tls_stack.orchestrator_addr(), pki.tls("attacker")) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(check, timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def _list_services(channel: grpc.aio.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    call = stub.ServerReflectionInfo(iter([request]))
    reply = await call.read()
    assert isinstance(reply, reflection_pb2.ServerReflectionResponse)
    return [s.name for s in reply.list_services_response.service]


async def test_reflection_is_off_by_default(tls_stack: Stack, sec_stack: Stack, pki: Pki) -> None:
    async with _channel(tls_stack.orchestrator_addr(), pki.tls("gateway")) as channel:
        code, _ = await _rpc_code(_list_services(channel))
        assert code == grpc.StatusCode.UNIMPLEMENTED
    async with grpc.aio.insecure_channel(sec_stack.orchestrator_addr()) as channel:
        code, _ = await _rpc_code(_list_services(channel))
        assert code == grpc.StatusCode.UNIMPLEMENTED


async def test_reflection_is_served_when_grpc_reflection_is_on() -> None:
    settings = OrchestratorSettings(grpc_host="127.0.0.1", grpc_port=0, grpc_reflection=True)
    service = GrpcService.from_settings("orchestrator", settings)
    service.add(
        "cai.v1.Orchestrator",
        lambda s: orchestrator_pb2_grpc.add_OrchestratorServicer_to_server(
            orchestrator_pb2_grpc.OrchestratorServicer(), s
        ),
    )
    await service.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            assert "cai.v1.Orchestrator" in await _list_services(channel)
    finally:
        await service.stop(0)


# -- plaintext mode and bad settings ----------------------------------------------------------


async def test_without_tls_files_the_local_stack_runs_in_plaintext(sec_stack: Stack) -> None:
    thread_id = str(uuid.uuid4())
    red = common_pb2.Principal(tenant_id="red")
    async with grpc.aio.insecure_channel(sec_stack.orchestrator_addr()) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorStub(channel)
        await stub.CreateThread(
            orchestrator_pb2.CreateThreadRequest(principal=red, thread_id=thread_id), timeout=10
        )
        reply = await stub.GetThread(
            orchestrator_pb2.GetThreadRequest(principal=red, thread_id=thread_id), timeout=10
        )
    assert thread_id.encode() in reply.json


def test_half_configured_tls_stops_a_service_with_the_settings_to_fix(tmp_path: Path) -> None:
    cert = tmp_path / "only.crt"
    cert.write_text("not needed: the other two files are missing\n")
    env = {
        **os.environ,
        "GRPC_TLS_CERT_FILE": str(cert),
        "GRPC_TLS_KEY_FILE": "",
        "GRPC_TLS_CA_FILE": "",
        "GATEWAY_PORT": str(free_port()),
        "GATEWAY_METRICS_PORT": "0",
        "REDIS_URL": "",
        "API_KEYS_FILE": "",
    }
    done = subprocess.run(
        [sys.executable, "-m", "cai_gateway"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "GRPC_TLS_KEY_FILE, GRPC_TLS_CA_FILE not set" in done.stderr
