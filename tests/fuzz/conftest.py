"""Fixtures of the fuzz suite: the fault suite's assets (made once per worker), the work functions stubbed, and
each fuzz test's seed and example count recorded on its report (``tests/conftest.py`` prints them at the end)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..robustness.harness import Assets, make_assets
from .fuzzing import fuzz_seed, work_stubbed


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return make_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def stubbed() -> Iterator[None]:
    with work_stubbed():
        yield


@pytest.fixture(autouse=True)
def _fuzz_record(request: pytest.FixtureRequest) -> Iterator[None]:
    """Record the seed and example count of a fuzz test on its report (xdist carries it to the summary)."""
    count = getattr(request.function, "_fuzz_examples", None)
    if count is not None:
        request.node.user_properties.append(("fuzz", f"seed={fuzz_seed()} examples={count}"))
    yield
