"""Shared fixtures: deterministic random-init models and their exports (no downloads); per-file progress."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import idlevit
from export.exporter import export_onnx


def make_model(arch: str = "deit_small", seed: int = 0, **kwargs) -> idlevit.IdleViT:
    """A deterministic random-init model whose CLS token and positions are far from zero.

    timm's init gives a CLS token of std 0.02, which makes CLS attention nearly uniform; a
    larger CLS token and position embedding give token scores with real spread, as a trained
    model has, so selection checks are meaningful.
    """
    torch.manual_seed(seed)
    model = idlevit.create_model(arch, **kwargs).eval()
    with torch.no_grad():
        model.cls_token.normal_(0, 1.0)
        model.pos_embed.normal_(0, 0.5)
    return model


@pytest.fixture(scope="session")
def deit_small() -> idlevit.IdleViT:
    return make_model("deit_small")


@pytest.fixture(scope="session")
def deit_small_onnx(deit_small: idlevit.IdleViT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deit_small (random init, keep rate 0.7) exported with index outputs, dynamic batch, opset 17."""
    path = tmp_path_factory.mktemp("onnx") / "deit_small.onnx"
    export_onnx(deit_small, path, with_indices=True, verify_batch=0, progress=False)
    return path


@pytest.fixture(scope="session")
def deit_tiny() -> idlevit.IdleViT:
    return make_model("deit_tiny", img_size=64, patch_size=8, num_classes=10)


def run_module(module: str, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args...`` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def assert_onnx_matches_reference(model: idlevit.IdleViT, session: ort.InferenceSession, batch: int) -> None:
    """ONNX Runtime vs the PyTorch reference on a seeded batch: logits within 1e-4, same kept sets.

    The graph must have been exported with index outputs. Order inside a kept set may differ
    where two scores are equal to rounding, so sets are compared.
    """
    size = model.cfg.img_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        logits, kept = model.forward_with_indices(images)
    outputs = session.run(None, {"images": images.numpy()})
    assert np.abs(outputs[0] - logits.numpy()).max() <= 1e-4
    for layer, got in zip(model.schedule.idle_layers, outputs[1:], strict=True):
        np.testing.assert_array_equal(np.sort(got, axis=1), np.sort(kept[layer].numpy(), axis=1))


class FileProgress:
    """One line per test file when its last test has run: ``tests/x.py: 12 passed, 1 skipped (34 s)``.

    The suite runs on two workers (pytest-xdist), whose dots do not say where the run is.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.total: Counter[str] = Counter()
        self.outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        self.started = time.monotonic()
        self.first_seen: dict[str, float] = {}
        self.reported: set[str] = set()

    def count(self, nodeids: list[str]) -> None:
        if not self.total:
            self.total.update(nodeid.split("::")[0] for nodeid in nodeids)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.count([item.nodeid for item in session.items])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: object, ids: list[str]) -> None:
        self.count(ids)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        path = report.nodeid.split("::")[0]
        self.first_seen.setdefault(path, time.monotonic())
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.outcomes[path][report.outcome] += 1
            done = sum(self.outcomes[path].values())
            if self.total[path] and done >= self.total[path] and path not in self.reported:
                self.reported.add(path)
                parts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(self.outcomes[path].items()))
                seconds = time.monotonic() - self.first_seen[path]
                reporter = self.config.pluginmanager.get_plugin("terminalreporter")
                if reporter is not None:
                    reporter.ensure_newline()
                    reporter.write_line(f"{path}: {parts} ({seconds:.0f} s)")


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or a run without workers) reports
        config.pluginmanager.register(FileProgress(config), "idlevit-file-progress")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """``fuzz: <test> seed=<s> examples=<n>`` for every fuzz test that ran (tests/fuzz records them)."""
    lines = sorted(
        f"fuzz: {report.nodeid.split('::', 1)[-1]} {value}"
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for key, value in getattr(report, "user_properties", ())
        if key == "fuzz"
    )
    if lines:
        terminalreporter.write_sep("-", "fuzz seeds and example counts")
        for line in lines:
            terminalreporter.write_line(line)
