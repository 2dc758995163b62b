"""Settings helpers shared by every service."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Fields every service has. Subclass per service in its `config.py`."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    log_level: str = "INFO"
    # Seconds a replica drains on SIGTERM; keep below terminationGracePeriodSeconds.
    shutdown_grace_seconds: float = 20.0


def redact_url(url: str) -> str:
    """Hide the password in a URL like redis://:secret@host:6379/0 for logs and errors."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
