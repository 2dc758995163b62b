"""Server-wide settings: CLI flags, each with an ``LLM_SIM_*`` environment variable as default."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

TOOL_MODES = ("auto", "never", "always")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
ENV_PREFIX = "LLM_SIM_"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Effective settings of one llm-sim process; per-request knobs start from these."""

    host: str = "127.0.0.1"
    port: int = 8090
    log_level: str = "info"
    ttft_ms: float = 0.0
    token_delay_ms: float = 0.0
    reply_tokens: int | None = None
    tool_mode: str = "auto"
    fail_rate: float = 0.0
    fail_status: int = 500
    retry_after_s: int = 1
    stall_after: int | None = None
    stall_rate: float = 1.0
    stall_seconds: float = 3600.0
    cut_after: int | None = None
    cut_rate: float = 1.0
    seed: int | None = None
    models: tuple[str, ...] = ("llm-sim", "llm-sim-embedding")
    embedding_dim: int = 384
    history_size: int = 1000


# Upper bound for delays and durations (ms or s): ample for any test, safe for timers.
MAX_DURATION = 1e9


def non_negative_float(value: str) -> float:
    """Parse a number between 0 and MAX_DURATION."""
    number = float(value)
    if not 0.0 <= number <= MAX_DURATION:
        raise ValueError(f"expected a number between 0 and {MAX_DURATION:g}, got {value!r}")
    return number


def non_negative_int(value: str) -> int:
    """Parse an integer >= 0."""
    number = int(value)
    if number < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return number


def optional_non_negative_int(value: str) -> int | None:
    """Parse an integer >= 0, or ``none``/``off``/empty for 'not set'."""
    if value.strip().lower() in ("", "none", "off"):
        return None
    return non_negative_int(value)


def probability(value: str) -> float:
    """Parse a probability in [0, 1]."""
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"expected a number between 0 and 1, got {value!r}")
    return number


def http_error_status(value: str) -> int:
    """Parse an HTTP error status (400-599)."""
    number = int(value)
    if not 400 <= number <= 599:
        raise ValueError(f"expected an HTTP error status 400-599, got {value!r}")
    return number


def tool_mode(value: str) -> str:
    """Parse a tool mode (auto, never, always)."""
    mode = value.strip().lower()
    if mode not in TOOL_MODES:
        raise ValueError(f"expected one of {', '.join(TOOL_MODES)}, got {value!r}")
    return mode


def _argparse_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """Wrap a parser so argparse reports its ValueError message."""

    def wrapped(value: str) -> T:
        try:
            return parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    wrapped.__name__ = parse.__name__
    return wrapped


def build_parser() -> argparse.ArgumentParser:
    """The llm-sim command line; every flag defaults to its ``LLM_SIM_<FLAG>`` variable."""
    defaults = SimConfig()
    parser = argparse.ArgumentParser(
        prog="llm-sim",
        description=(
            "llm-sim: an OpenAI-compatible LLM *simulator* for offline runs, tests and benchmarks. "
            "It is not a real model: answers quote the context it is given. Every flag can also "
            "be set with the environment variable LLM_SIM_<FLAG> (e.g. LLM_SIM_TTFT_MS)."
        ),
    )

    def add(
        flag: str,
        parse: Callable[[str], object],
        default: object,
        help_text: str,
        choices: Sequence[str] | None = None,
    ) -> None:
        env_name = ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()
        env_value = os.environ.get(env_name)
        parser.add_argument(
            flag,
            type=_argparse_type(parse),
            # argparse runs `type` on string defaults, so a bad env value is reported like a flag.
            default=env_value if env_value is not None else default,
            help=f"{help_text} [env {env_name}; default {default}]",
            choices=choices,
        )

    add("--host", str, defaults.host, "interface to bind")
    add("--port", int, defaults.port, "TCP port")
    add("--log-level", str.lower, defaults.log_level, "log level", choices=LOG_LEVELS)
    add("--ttft-ms", non_negative_float, defaults.ttft_ms, "time to first token, ms")
    add("--token-delay-ms", non_negative_float, defaults.token_delay_ms, "delay between tokens, ms")
    add(
        "--reply-tokens",
        optional_non_negative_int,
        defaults.reply_tokens,
        "exact reply length in tokens (none = natural length)",
    )
    add("--tool-mode", tool_mode, defaults.tool_mode, "tool calling: auto, never or always")
    add("--fail-rate", probability, defaults.fail_rate, "fraction of chat requests that fail")
    add("--fail-status", http_error_status, defaults.fail_status, "status of failures (500, 429)")
    add("--retry-after", non_negative_int, defaults.retry_after_s, "Retry-After seconds on 429")
    add(
        "--stall-after",
        optional_non_negative_int,
        defaults.stall_after,
        "stall every chat stream after this many tokens",
    )
    add("--stall-rate", probability, defaults.stall_rate, "fraction of streams --stall-after hits")
    add("--stall-seconds", non_negative_float, defaults.stall_seconds, "how long a stall lasts")
    add(
        "--cut-after",
        optional_non_negative_int,
        defaults.cut_after,
        "abort every chat stream's connection after this many tokens",
    )
    add("--cut-rate", probability, defaults.cut_rate, "fraction of streams --cut-after hits")
    add("--seed", optional_non_negative_int, defaults.seed, "seed for fault sampling")
    add(
        "--models",
        lambda v: tuple(m.strip() for m in v.split(",") if m.strip()),
        ",".join(defaults.models),
        "comma-separated model ids listed by /v1/models",
    )
    add("--embedding-dim", non_negative_int, defaults.embedding_dim, "default embedding dimension")
    add("--history-size", non_negative_int, defaults.history_size, "requests kept for /v1/sim")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> SimConfig:
    """Parse the command line (and ``LLM_SIM_*`` environment) into a SimConfig."""
    args = build_parser().parse_args(argv)
    if args.embedding_dim < 1:
        build_parser().error("--embedding-dim must be >= 1")
    return SimConfig(
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        ttft_ms=args.ttft_ms,
        token_delay_ms=args.token_delay_ms,
        reply_tokens=args.reply_tokens,
        tool_mode=args.tool_mode,
        fail_rate=args.fail_rate,
        fail_status=args.fail_status,
        retry_after_s=args.retry_after,
        stall_after=args.stall_after,
        stall_rate=args.stall_rate,
        stall_seconds=args.stall_seconds,
        cut_after=args.cut_after,
        cut_rate=args.cut_rate,
        seed=args.seed,
        models=args.models or SimConfig().models,
        embedding_dim=args.embedding_dim,
        history_size=args.history_size,
    )
