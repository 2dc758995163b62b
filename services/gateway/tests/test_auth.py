"""API keys: the file format, hashing, header parsing, constant-time lookup and reloading."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from cai_gateway.auth import KeyRing, KeysFileError, hash_key, parse_keys, presented_key

ALPHA = "alpha-secret"
BETA = "beta-secret"


def keys_file(*entries: tuple[str, str, str]) -> str:
    lines = ["keys:"]
    for key_id, tenant, key in entries:
        lines.append(f'  - {{id: {key_id}, tenant: {tenant}, sha256: "{hash_key(key)}"}}')
    return "\n".join(lines) + "\n"


def test_hash_key_matches_sha256sum_as_the_helm_chart_computes_it() -> None:
    # The chart writes `sha256sum $key`: the hex digest of the key's bytes, no newline.
    out = subprocess.run(
        ["sha256sum"], input=ALPHA.encode(), capture_output=True, check=True
    ).stdout.decode()
    assert hash_key(ALPHA) == out.split()[0] == hashlib.sha256(ALPHA.encode()).hexdigest()


def test_parse_keys_reads_the_chart_format_with_comments() -> None:
    text = "# Cai gateway API keys\n" + keys_file(("a", "tenant-a", ALPHA), ("b", "tenant-b", BETA))
    keys = parse_keys(text)
    assert [(k.id, k.tenant) for k in keys] == [("a", "tenant-a"), ("b", "tenant-b")]
    assert keys[0].digest == hashlib.sha256(ALPHA.encode()).digest()
    assert keys[0].rate_limit_per_second is None


def test_parse_keys_reads_per_key_limits() -> None:
    text = (
        f'keys:\n  - {{id: a, tenant: t, sha256: "{hash_key(ALPHA)}", '
        "rate_limit_per_second: 2.5, rate_limit_burst: 4, max_concurrent_streams: 1}\n"
    )
    (key,) = parse_keys(text)
    assert (key.rate_limit_per_second, key.rate_limit_burst, key.max_concurrent_streams) == (
        2.5,
        4,
        1,
    )


def test_a_key_names_its_subject_or_defaults_to_its_id() -> None:
    text = (
        f'keys:\n  - {{id: a, tenant: t, subject: ops-team, sha256: "{hash_key(ALPHA)}"}}\n'
        f'  - {{id: b, tenant: t, sha256: "{hash_key(BETA)}"}}\n'
    )
    assert [k.subject for k in parse_keys(text)] == ["ops-team", "b"]


def test_an_empty_file_has_no_keys() -> None:
    assert parse_keys("") == []
    assert parse_keys("keys: []") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("keys: [{id: a, tenant: t, sha256: abc}]", "keys.0.sha256"),
        (f'keys: [{{id: a, sha256: "{hash_key(ALPHA)}"}}]', "keys.0.tenant"),
        (f'keys: [{{id: a, tenant: t, sha256: "{hash_key(ALPHA)}", key: x}}]', "keys.0.key"),
        (f'keys: [{{id: "a b", tenant: t, sha256: "{hash_key(ALPHA)}"}}]', "keys.0.id"),
        (f'keys: [{{id: a, tenant: "a:b", sha256: "{hash_key(ALPHA)}"}}]', "keys.0.tenant"),
        (
            f'keys: [{{id: a, tenant: t, sha256: "{hash_key(ALPHA)}", max_concurrent_streams: 0}}]',
            "keys.0.max_concurrent_streams",
        ),
        ("keys: {id: a}", "keys"),
        ("[1, 2]", "(top level)"),
        ("keys: [", "not valid YAML"),
        (keys_file(("a", "t", ALPHA), ("a", "u", BETA)), "duplicate key id(s): a"),
    ],
)
def test_invalid_files_are_refused_with_the_bad_field_named(text: str, message: str) -> None:
    with pytest.raises(KeysFileError) as err:
        parse_keys(text, "keys.yaml")
    assert message in str(err.value) and str(err.value).startswith("keys.yaml")


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "expected"),
    [
        ("Bearer k1", None, "k1"),
        ("bearer   k1  ", None, "k1"),
        ("BEARER k1", None, "k1"),
        (None, "k2", "k2"),
        ("Bearer k1", "k2", "k2"),  # X-Api-Key wins (langgraph-sdk sends it)
        ("Basic dXNlcjpwYXNz", None, None),
        ("Bearer", None, None),
        ("Bearer    ", None, None),
        (None, "   ", None),
        (None, None, None),
    ],
)
def test_presented_key(
    authorization: str | None, x_api_key: str | None, expected: str | None
) -> None:
    assert presented_key(authorization, x_api_key) == expected


def test_keyring_authenticates_by_hash_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(keys_file(("a", "tenant-a", ALPHA), ("b", "tenant-b", BETA)))
    ring = KeyRing(str(path))
    ring.load()
    assert ring.authenticate(ALPHA).tenant == "tenant-a"  # type: ignore[union-attr]
    assert ring.authenticate(BETA).tenant == "tenant-b"  # type: ignore[union-attr]
    assert ring.authenticate(hash_key(ALPHA)) is None  # the stored hash is not a key
    assert ring.authenticate(ALPHA + " ") is None
    assert ring.authenticate("") is None
    assert ring.authenticate("x" * 10_000) is None
    assert ring.authenticate("\udcff") is None  # lone surrogates hash, never crash


def test_keyring_load_fails_loudly_on_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeysFileError, match="cannot read API keys file"):
        KeyRing(str(tmp_path / "missing.yaml")).load()


async def test_keyring_picks_up_a_rotated_file_and_keeps_old_keys_if_the_new_one_is_bad(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(keys_file(("a", "tenant-a", ALPHA)))
    ring = KeyRing(str(path), reload_seconds=0)
    ring.load()
    assert ring.authenticate(BETA) is None

    path.write_text(keys_file(("b", "tenant-b", BETA)))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    await ring.refresh()
    assert ring.authenticate(BETA) is not None and ring.authenticate(ALPHA) is None

    path.write_text("keys: [{id: broken}]")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000))
    await ring.refresh()
    assert ring.authenticate(BETA) is not None  # the bad file was refused, the old keys stay


async def test_keyring_without_a_file_knows_no_keys() -> None:
    ring = KeyRing("")
    ring.load()
    await ring.refresh()
    assert not ring.configured and ring.authenticate(ALPHA) is None


def test_parse_keys_reads_tier_and_run_quotas() -> None:
    text = (
        f'keys:\n  - {{id: a, tenant: t, sha256: "{hash_key(ALPHA)}", '
        "tier: premium, max_running_runs: 3, max_queued_runs: 7}\n"
        f'  - {{id: b, tenant: t, sha256: "{hash_key(BETA)}"}}\n'
    )
    a, b = parse_keys(text)
    assert (a.tier, a.max_running_runs, a.max_queued_runs) == ("premium", 3, 7)
    assert (b.tier, b.max_running_runs, b.max_queued_runs) == ("standard", None, None)


@pytest.mark.parametrize(
    "field", ["tier: gold", "max_running_runs: 0", "max_queued_runs: 0", "max_queued_runs: -1"]
)
def test_a_bad_tier_or_quota_names_the_field(field: str) -> None:
    text = f'keys:\n  - {{id: a, tenant: t, sha256: "{hash_key(ALPHA)}", {field}}}\n'
    with pytest.raises(KeysFileError, match=field.split(":")[0]):
        parse_keys(text)
