"""API keys: stored as SHA-256 hashes in a YAML file (the Helm chart's Secret), each mapped to a
tenant. The file is re-read when it changes, so rotating the Secret needs no restart."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cai_common.tenants import check_tenant

log = logging.getLogger(__name__)

# Keys longer than this are rejected without hashing (no real key is this long).
MAX_KEY_LENGTH = 512


class KeyEntry(BaseModel):
    """One entry of the keys file. Limits, when set, override the gateway's defaults."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")
    # Part of storage key names: cai_common.tenants.TENANT_RULE (no ':', '.', '@', braces).
    tenant: str
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    # Who holds the key (a person, a team, a service), for the access log; defaults to the id.
    subject: str | None = Field(default=None, min_length=1, max_length=128)
    rate_limit_per_second: float | None = Field(default=None, ge=0)
    rate_limit_burst: int | None = Field(default=None, ge=1)
    # At least 1: no key is uncapped (0 once meant "unlimited" without saying so).
    max_concurrent_streams: int | None = Field(default=None, ge=1)
    # How the orchestrator weighs the tenant's runs against other tenants' (docs/api.md#quotas).
    tier: Literal["premium", "standard", "batch"] = "standard"
    # The tenant's run quotas; unset: the orchestrator's defaults (TENANT_MAX_*_RUNS).
    max_running_runs: int | None = Field(default=None, ge=1)
    max_queued_runs: int | None = Field(default=None, ge=1)

    @field_validator("tenant")
    @classmethod
    def _tenant_name(cls, value: str) -> str:
        return check_tenant(value)


class KeysFile(BaseModel):
    """The whole file: `keys: [...]`."""

    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry] = Field(default_factory=list)


@dataclass(frozen=True)
class ApiKey:
    """An authenticated key: who it is, whose data it reaches, its limit overrides."""

    id: str
    tenant: str
    digest: bytes
    subject: str = ""
    rate_limit_per_second: float | None = None
    rate_limit_burst: int | None = None
    max_concurrent_streams: int | None = None
    tier: str = "standard"
    max_running_runs: int | None = None
    max_queued_runs: int | None = None


class KeysFileError(ValueError):
    """The keys file is missing or invalid; the message names the bad entry and field."""


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key, as the keys file stores it."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_keys(text: str, source: str = "keys file") -> list[ApiKey]:
    """Parse and validate the YAML keys file.

    Raises:
        KeysFileError: not YAML, not the expected shape, a bad field or a duplicate id.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KeysFileError(f"{source}: not valid YAML: {exc}") from exc
    try:
        parsed = KeysFile.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise KeysFileError(f"{source}: {where}: {first['msg']}") from None
    ids = [k.id for k in parsed.keys]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise KeysFileError(f"{source}: duplicate key id(s): {', '.join(dupes)}")
    return [
        ApiKey(
            id=k.id,
            tenant=k.tenant,
            digest=bytes.fromhex(k.sha256),
            subject=k.subject or k.id,
            rate_limit_per_second=k.rate_limit_per_second,
            rate_limit_burst=k.rate_limit_burst,
            max_concurrent_streams=k.max_concurrent_streams,
            tier=k.tier,
            max_running_runs=k.max_running_runs,
            max_queued_runs=k.max_queued_runs,
        )
        for k in parsed.keys
    ]


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request carries: `X-Api-Key`, else `Authorization: Bearer <key>`."""
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return None


class KeyRing:
    """The loaded keys; `refresh()` re-reads the file when its modification time or size moved."""

    def __init__(self, path: str, reload_seconds: float = 5.0) -> None:
        self.path = path
        self.reload_seconds = reload_seconds
        self.keys: list[ApiKey] = []
        self._stamp: tuple[int, int] | None = None
        self._checked_at = float("-inf")

    @property
    def configured(self) -> bool:
        """Whether a keys file is in use."""
        return bool(self.path)

    def load(self) -> None:
        """Load the file now (at start-up: a missing or invalid file stops the gateway).

        Raises:
            KeysFileError: the file cannot be read or is invalid.
        """
        if not self.path:
            return
        try:
            stat = os.stat(self.path)
            text = Path(self.path).read_text()
        except OSError as exc:
            raise KeysFileError(f"cannot read API keys file {self.path}: {exc}") from exc
        self.keys = parse_keys(text, self.path)
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        self._checked_at = time.monotonic()

    async def refresh(self) -> None:
        """Pick up a changed file (at most once per `reload_seconds`).

        A file that is gone or cannot be read fails closed: no key is valid until it is back
        (removing the Secret must not leave revoked keys working). A file that reads but is
        invalid keeps the loaded keys (a typo in a rotation must not lock everyone out). Both
        are logged as errors.
        """
        if not self.path or time.monotonic() - self._checked_at < self.reload_seconds:
            return
        self._checked_at = time.monotonic()
        try:
            stat = await anyio.to_thread.run_sync(os.stat, self.path)
            if (stat.st_mtime_ns, stat.st_size) == self._stamp:
                return
            text = await anyio.to_thread.run_sync(Path(self.path).read_text)
        except OSError as exc:
            self._fail_closed(exc)
            return
        try:
            self.keys = parse_keys(text, self.path)
        except KeysFileError as exc:
            log.error("API keys file invalid; keeping the loaded keys", extra={"error": str(exc)})
            return
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        log.info("API keys reloaded", extra={"keys": len(self.keys)})

    def _fail_closed(self, exc: OSError) -> None:
        if self.keys or self._stamp is not None:
            log.error(
                "API keys file unreadable; no API key is valid until it is back",
                extra={"path": self.path, "error": str(exc), "keys_dropped": len(self.keys)},
            )
        self.keys = []
        self._stamp = None  # whatever comes back is loaded, even with the old stamp

    def authenticate(self, key: str) -> ApiKey | None:
        """The entry whose hash matches `key`, or None. Every entry is compared in constant time
        and none is skipped, so timing reveals neither which entry matched nor how much."""
        if not key or len(key) > MAX_KEY_LENGTH:
            return None
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found: ApiKey | None = None
        for entry in self.keys:
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found
