"""Tenant names: one rule, checked where a name enters (the gateway's keys file and settings, and
every orchestrator RPC).

A tenant name is part of Redis key names (`cai:{t:<tenant>:<thread>}:…`, `cai:tenant:<tenant>:…`),
so it may not contain the separator `:`, hash-tag braces or anything else a key name gives meaning
to: tenant `a:b` with thread `c` would otherwise share keys with tenant `a` and thread `b:c`.
"""

from __future__ import annotations

import re

TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
TENANT_RULE = (
    "a tenant name is 1 to 63 letters, digits, '-' or '_', starting with a letter or digit"
)
_TENANT = re.compile(TENANT_PATTERN)


def is_valid_tenant(name: str) -> bool:
    """Whether `name` follows the tenant name rule (TENANT_RULE)."""
    return _TENANT.fullmatch(name) is not None


def check_tenant(name: str) -> str:
    """`name`, if it is a valid tenant name.

    Raises:
        ValueError: it is not; the message states the rule.
    """
    if not is_valid_tenant(name):
        raise ValueError(f"{TENANT_RULE} (got {name!r})")
    return name
