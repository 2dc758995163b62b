"""Generate the values table of charts/cai/README.md from the `# --` comments in values.yaml.

The comment convention is helm-docs': `# -- text` (continued on following `#` lines) documents the
key below it; a documented key whose value is a map or list is one row, its children need no docs
of their own. helm-docs itself is a Go binary that no package registry here ships, so this small
script does the same job.

    python tests/charts/values_table.py          # rewrite the table in the README
    python tests/charts/values_table.py --check  # exit 1 if the README is stale
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "cai"
VALUES = CHART / "values.yaml"
README = CHART / "README.md"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(\s|$)")
_DOC = re.compile(r"^ *# -- ?(?P<text>.*)$")
_MORE = re.compile(r"^ *#(?! --) ?(?P<text>.*)$")


@dataclass
class Row:
    """One documented value."""

    key: str
    type: str
    default: Any
    description: str


def _lookup(data: Any, path: list[str]) -> tuple[bool, Any]:
    node = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def descriptions(text: str, data: dict[str, Any]) -> dict[str, str]:
    """Dotted key -> description, for every key preceded by a `# --` comment."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        if m := _DOC.match(line):
            pending = [m.group("text").strip()]
            continue
        if pending is not None and (m := _MORE.match(line)):
            pending.append(m.group("text").strip())
            continue
        m = _KEY.match(line)
        if not m:
            if line.strip():
                pending = None
            continue
        indent = len(m.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group("key")))
        path = [k for _, k in stack]
        exists, _ = _lookup(data, path)
        if exists and pending is not None:
            found[".".join(path)] = " ".join(p for p in pending if p)
        pending = None
    return found


def _type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def leaves(data: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf value (empty maps and lists count as leaves)."""
    if isinstance(data, dict) and data:
        out = []
        for key, value in data.items():
            out += leaves(value, f"{prefix}.{key}" if prefix else key)
        return out
    return [prefix]


def undocumented(text: str, data: dict[str, Any]) -> list[str]:
    """Leaves with no `# --` comment on themselves or on an enclosing key."""
    docs = descriptions(text, data)
    missing = []
    for leaf in leaves(data):
        parts = leaf.split(".")
        if not any(".".join(parts[:i]) in docs for i in range(1, len(parts) + 1)):
            missing.append(leaf)
    return missing


def rows(text: str) -> list[Row]:
    """Table rows in values.yaml order."""
    data = yaml.safe_load(text)
    out = []
    for key, description in descriptions(text, data).items():
        _, value = _lookup(data, key.split("."))
        out.append(Row(key, _type(value), value, description))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(text: str) -> str:
    """The Markdown table."""
    lines = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for row in rows(text):
        default = json.dumps(row.default, ensure_ascii=False, separators=(", ", ": "))
        lines.append(
            f"| `{row.key}` | {row.type} | `{_cell(default)}` | {_cell(row.description)} |"
        )
    return "\n".join(lines)


def updated_readme(readme: str, values_text: str) -> str:
    """The README with the table between the markers replaced."""
    if START not in readme or END not in readme:
        raise SystemExit(f"{README} lacks the {START} / {END} markers")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table(values_text)}\n{END}{tail}"


def main(argv: list[str]) -> int:
    """Rewrite the README table, or with --check report whether it is stale."""
    values_text = VALUES.read_text()
    missing = undocumented(values_text, yaml.safe_load(values_text))
    if missing:
        print("values without a `# --` comment:", *missing, sep="\n  ")
        return 1
    readme = README.read_text()
    fresh = updated_readme(readme, values_text)
    if "--check" in argv:
        if fresh != readme:
            print("charts/cai/README.md is stale: run `make chart-docs`")
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
