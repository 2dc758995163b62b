"""Per-request knobs: server settings, overridden by `metadata` keys, then by `X-Sim-*` headers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from llm_sim.config import (
    SimConfig,
    http_error_status,
    non_negative_float,
    optional_non_negative_int,
    tool_mode,
)
from llm_sim.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class Knobs:
    """What one chat request asks of the simulator."""

    ttft_ms: float
    token_delay_ms: float
    reply_tokens: int | None
    tool_mode: str
    fail_status: int | None
    stall_after: int | None
    stall_seconds: float
    cut_after: int | None


@dataclass(frozen=True, slots=True)
class KnobSpec:
    """Where a knob comes from in a request and how its text is parsed."""

    field: str
    header: bytes
    metadata_key: str
    parse: Callable[[str], Any]


KNOB_SPECS: tuple[KnobSpec, ...] = (
    KnobSpec("ttft_ms", b"x-sim-ttft-ms", "sim_ttft_ms", non_negative_float),
    KnobSpec("token_delay_ms", b"x-sim-token-delay-ms", "sim_token_delay_ms", non_negative_float),
    KnobSpec("reply_tokens", b"x-sim-reply-tokens", "sim_reply_tokens", optional_non_negative_int),
    KnobSpec("tool_mode", b"x-sim-tool-mode", "sim_tool_mode", tool_mode),
    KnobSpec("fail_status", b"x-sim-fail-status", "sim_fail_status", http_error_status),
    KnobSpec("stall_after", b"x-sim-stall-after", "sim_stall_after", optional_non_negative_int),
    KnobSpec("stall_seconds", b"x-sim-stall-seconds", "sim_stall_seconds", non_negative_float),
    KnobSpec("cut_after", b"x-sim-cut-after", "sim_cut_after", optional_non_negative_int),
)
_SPEC_BY_HEADER = {spec.header: spec for spec in KNOB_SPECS}
_SPEC_BY_METADATA = {spec.metadata_key: spec for spec in KNOB_SPECS}


def server_knobs(config: SimConfig) -> Knobs:
    """The knobs a request gets when it overrides nothing (faults sampled separately)."""
    return Knobs(
        ttft_ms=config.ttft_ms,
        token_delay_ms=config.token_delay_ms,
        reply_tokens=config.reply_tokens,
        tool_mode=config.tool_mode,
        fail_status=None,
        stall_after=None,
        stall_seconds=config.stall_seconds,
        cut_after=None,
    )


def _parse(spec: KnobSpec, raw: object, where: str) -> Any:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise InvalidRequest(f"{where} must be a string or a number", where)
    try:
        return spec.parse(str(raw))
    except ValueError as exc:
        raise InvalidRequest(f"Invalid {where}: {exc}", where) from exc


def apply_overrides(
    base: Knobs,
    headers: Mapping[bytes, bytes],
    metadata: Mapping[str, object] | None,
) -> Knobs:
    """Apply ``metadata`` ``sim_*`` keys, then ``X-Sim-*`` headers (headers win) to ``base``.

    Raises:
        InvalidRequest: a knob value does not parse; ``param`` names the header or key.
    """
    changes: dict[str, Any] = {}
    if metadata:
        for key, raw in metadata.items():
            spec = _SPEC_BY_METADATA.get(key)
            if spec is not None:
                changes[spec.field] = _parse(spec, raw, f"metadata.{key}")
    for name, value in headers.items():
        spec = _SPEC_BY_HEADER.get(name)
        if spec is not None:
            text = value.decode("latin-1")
            changes[spec.field] = _parse(spec, text, name.decode("latin-1"))
    return replace(base, **changes) if changes else base
