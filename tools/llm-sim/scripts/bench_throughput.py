"""Measure llm-sim streaming throughput: N concurrent streams, tokens/s seen by a lean client.

Usage (from the repo root):
    .venv/bin/python tools/llm-sim/scripts/bench_throughput.py --concurrency 100 --duration 10

Without --url it starts its own llm-sim on a free port and also reports the server's CPU time
per token (read from /proc). The client is raw asyncio over keep-alive HTTP/1.1 connections and
only counts content chunks, so it costs far less CPU than the server it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import orjson

CONTENT_MARK = b'"delta":{"content":'
END_MARK = b"\r\n0\r\n\r\n"
SYSTEM_PROMPT = (
    "You are Ada, the support assistant of Cai. Cai streams tokens from an LLM agent over SSE. "
    "Runs are durable: a client may disconnect and resume with Last-Event-ID. "
    "The orchestrator executes runs taken from a Redis queue and appends events to a stream. "
    "The retriever searches Qdrant for context passages relevant to the question."
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_server(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_sim", "--port", str(port), "--log-level", "warning"]
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("llm-sim did not become healthy within 15 s")


def _request_bytes(host: str, port: int, reply_tokens: int, delay_ms: float) -> bytes:
    body = orjson.dumps(
        {
            "model": "llm-sim",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": "How does a client resume a durable run?"},
            ],
        }
    )
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"X-Sim-Reply-Tokens: {reply_tokens}\r\nX-Sim-Token-Delay-Ms: {delay_ms}\r\n\r\n"
    )
    return head.encode() + body


async def _worker(host: str, port: int, request: bytes, stop_at: float, totals: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < stop_at:
            writer.write(request)
            buf = bytearray()
            while not buf.endswith(END_MARK):
                data = await reader.read(262144)
                if not data:
                    raise ConnectionError("server closed the connection")
                buf += data
            if not buf.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(bytes(buf[:200]).decode(errors="replace"))
            totals[0] += buf.count(CONTENT_MARK)
            totals[1] += 1
    finally:
        writer.close()


async def _run(args: argparse.Namespace, host: str, port: int) -> tuple[int, int, float]:
    request = _request_bytes(host, port, args.reply_tokens, args.delay_ms)
    totals = [0, 0]
    started = time.monotonic()
    stop_at = started + args.duration
    await asyncio.gather(
        *(_worker(host, port, request, stop_at, totals) for _ in range(args.concurrency))
    )
    return totals[0], totals[1], time.monotonic() - started


def main() -> None:
    """Run the benchmark and write a summary to stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an already running llm-sim (default: start one)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--reply-tokens", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()

    proc = None
    if args.url:
        parts = urlsplit(args.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
    else:
        host, port = "127.0.0.1", _free_port()
        proc = _start_server(port)
    try:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        cpu_before = _cpu_seconds(proc.pid) if proc else 0.0
        tokens, streams, elapsed = asyncio.run(_run(args, host, port))
        cpu = _cpu_seconds(proc.pid) - cpu_before if proc else 0.0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    lines = [
        f"concurrency={args.concurrency} reply_tokens={args.reply_tokens} "
        f"delay_ms={args.delay_ms} duration={elapsed:.1f}s",
        f"streams={streams} ({streams / elapsed:.0f}/s) tokens={tokens}",
        f"throughput={tokens / elapsed:,.0f} tokens/s",
    ]
    if proc is not None and tokens:
        lines.append(
            f"server cpu={cpu:.2f}s ({cpu / elapsed:.0%} of one core), "
            f"{cpu / tokens * 1e6:.1f} cpu-us/token, {tokens / cpu:,.0f} tokens per cpu-second"
        )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
