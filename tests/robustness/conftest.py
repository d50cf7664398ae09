"""Fixtures of the fault-injection suite: the demo exported once per session, and a scratch folder per case."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from export.exporter import export_checkpoint
from idlevit.checkpoint import DEMO_CHECKPOINT
from idlevit.data import digits_split

from .harness import Assets


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    folder = tmp_path_factory.mktemp("assets")
    onnx = folder / "demo.onnx"
    export_checkpoint("demo", out=onnx, verify=False, progress=False, exporter="torchscript")
    ckpt = folder / "demo.pth"
    shutil.copyfile(DEMO_CHECKPOINT, ckpt)
    images, _ = digits_split("test", 32)
    digit = np.round(images[0, 0].numpy() * 255).astype(np.uint8)
    for path in (onnx, ckpt):  # read-only: a case that writes onto them fails loudly, here too
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    return Assets(onnx=onnx, ckpt=ckpt, digit=digit)


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
