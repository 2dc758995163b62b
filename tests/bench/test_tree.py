"""BENCH_TREE: another source tree's services, refused when it predates cai_common.runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from cai_bench.__main__ import use_tree


def test_a_tree_without_cai_common_runs_is_refused(tmp_path: Path) -> None:
    (tmp_path / "libs/cai-common/src/cai_common").mkdir(parents=True)
    before = list(sys.path)
    with pytest.raises(SystemExit, match="cai_common/runs.py"):
        use_tree(str(tmp_path))
    assert sys.path == before


def test_a_tree_with_it_goes_first_on_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "libs/cai-common/src/cai_common/runs.py"
    runs.parent.mkdir(parents=True)
    runs.touch()
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "elsewhere")
    assert use_tree(str(tmp_path)) == str(tmp_path.resolve())
    src = str(tmp_path / "libs/cai-common/src")
    assert sys.path[0] == src
    assert os.environ["PYTHONPATH"].split(os.pathsep) == [src, "elsewhere"]
