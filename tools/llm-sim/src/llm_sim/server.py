"""Run the simulator under uvicorn (uvloop + httptools when installed)."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any

import uvicorn

from llm_sim.app import SimApp, create_app
from llm_sim.chat import ABORT_EXTENSION
from llm_sim.config import SimConfig

logger = logging.getLogger("llm_sim")

# Streams still open at shutdown (e.g. stalled ones) are cancelled after this many seconds.
GRACEFUL_SHUTDOWN_S = 3
TRACE_LOG_LEVEL = 5

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # uvicorn without the [standard] extra: h11, and cuts close with a FIN
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


def _reset(transport: asyncio.Transport) -> None:
    """Close ``transport`` with a TCP RST (SO_LINGER 0), dropping anything unsent."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            logger.debug("SO_LINGER unavailable; the cut will be a plain close")
    transport.abort()


if HttpToolsProtocol is not None:

    class SimHttpProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, plus a scope extension to reset the connection."""

        def on_message_begin(self) -> None:
            super().on_message_begin()
            extensions: dict[str, Any] = {ABORT_EXTENSION: self._abort_connection}
            self.scope["extensions"] = extensions

        def _abort_connection(self) -> None:
            _reset(self.transport)
            # connection_lost runs on a later loop turn; mark the request done now so uvicorn
            # does not log the unfinished response as an application error.
            if self.cycle is not None:
                self.cycle.disconnected = True


class SimServer(uvicorn.Server):
    """uvicorn's server, telling the app when shutdown starts so stalls do not hold it up."""

    def __init__(self, config: uvicorn.Config, app: SimApp) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Release stalled streams, then drain as uvicorn does."""
        self._app.begin_shutdown()
        await super().shutdown(sockets)


def serve(config: SimConfig) -> None:
    """Serve the simulator until SIGINT/SIGTERM."""
    level = TRACE_LOG_LEVEL if config.log_level == "trace" else config.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.info(
        "llm-sim (a simulator, not a real model) on http://%s:%d models=%s ttft_ms=%g "
        "token_delay_ms=%g reply_tokens=%s tool_mode=%s fail_rate=%g fail_status=%d "
        "stall_after=%s cut_after=%s seed=%s",
        config.host,
        config.port,
        ",".join(config.models),
        config.ttft_ms,
        config.token_delay_ms,
        config.reply_tokens,
        config.tool_mode,
        config.fail_rate,
        config.fail_status,
        config.stall_after,
        config.cut_after,
        config.seed,
    )
    app = create_app(config)
    uvicorn_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        http=SimHttpProtocol if HttpToolsProtocol is not None else "auto",
        loop="auto",
        log_level=level if isinstance(level, int) else config.log_level,
        access_log=config.log_level in ("debug", "trace"),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        backlog=2048,
    )
    SimServer(uvicorn_config, app).run()
