"""Exported graphs shared by the export tests: each is exported once per test run, by either exporter.

An export takes seconds (the dynamo exporter about three times as long as the TorchScript one),
so graphs are session fixtures, and under pytest-xdist the workers share one file per graph
(a file lock decides who exports it; the others wait and read it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

import idlevit
from export.contract import EXPORTERS
from export.exporter import export_onnx

from ..conftest import make_model


def shared_file(
    tmp_path_factory: pytest.TempPathFactory, worker_id: str, name: str, make: Callable[[Path], None]
) -> Path:
    """``name`` in a folder every xdist worker of this run sees, made by ``make(path)`` once."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # xdist: each worker's basetemp sits in the run's own folder
        root = root.parent
    path = root / "shared-graphs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        if not path.is_file():
            make(path)
    return path


def shallow_model(**kwargs) -> idlevit.IdleViT:
    """deit_tiny cut to 4 blocks (idle layers 1..3), 32 px, 16 tokens: the same graph pattern, traced fast."""
    options = dict(img_size=32, patch_size=8, num_classes=10, depth=4, idle_layers=[1, 2, 3])
    return make_model("deit_tiny", **{**options, "keep_ratios": [0.7, 0.5, 0.3], **kwargs})


@pytest.fixture(params=EXPORTERS, scope="session")
def exporter(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def deit_small_graphs(
    deit_small: idlevit.IdleViT, tmp_path_factory: pytest.TempPathFactory, worker_id: str
) -> Callable[[str], Path]:
    """deit_small (random init, keep rate 0.7) with index outputs, dynamic batch, default opset, by exporter."""

    def graph(exporter: str) -> Path:
        def make(path: Path) -> None:
            export_onnx(deit_small, path, with_indices=True, exporter=exporter, verify_batch=0, progress=False)

        return shared_file(tmp_path_factory, worker_id, f"deit_small_{exporter}.onnx", make)

    return graph


@pytest.fixture(scope="session")
def deit_small_graph(deit_small_graphs: Callable[[str], Path], exporter: str) -> Path:
    return deit_small_graphs(exporter)
