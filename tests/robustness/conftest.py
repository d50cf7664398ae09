"""Fixtures of the fault-injection suite: the demo exported once per session, and a scratch folder per case."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .harness import Assets, make_assets


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return make_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """An empty working folder for one command; permissions a case took away are given back after it."""
    folder = tmp_path / "work"
    folder.mkdir()
    yield folder
    for base, dirs, _files in os.walk(folder):
        for name in dirs:
            path = Path(base) / name
            if not path.is_symlink():
                path.chmod(0o755)
