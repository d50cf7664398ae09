"""Every command's flags, fuzzed from its own parser: each run ends as documented (see :mod:`.fuzzing`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ..robustness.harness import Assets, snapshot
from .fuzzing import CKPT, COMMANDS, ONNX, argv_for, check_run, fuzz, parser_of, prepare, run_in_process, tidy

#: What each command's line starts with, so that most runs get past "which model?" to the flags themselves.
BASE: dict[str, tuple[str, ...]] = {
    "benchmarks.profile": ("--onnx", ONNX),
    "engines.infer": ("--model", ONNX),
    "export.trt": ("--onnx", ONNX),
    "idlevit.finetune": ("--out", "new.pth"),
    "validate.accuracy": ("--onnx", ONNX, "--ckpt", CKPT),
    "validate.parity": ("--onnx", ONNX, "--ckpt", CKPT),
}


@pytest.mark.parametrize("command", COMMANDS)
@fuzz(scale=1.0)
@given(data=st.data())
def test_fuzzed_flags_end_as_documented(
    command: str, data: st.DataObject, assets: Assets, stubbed: None, tmp_path: Path
) -> None:
    argv = data.draw(argv_for(parser_of(command), BASE.get(command, ())), label="argv")
    root = tmp_path / "run"
    work = root / "a" / "b" / "work"
    if not work.exists():  # one folder per test: each run's outputs are removed after it (tidy)
        prepare(root, assets)
    before = snapshot(root)
    try:
        check_run(run_in_process(command, argv, work), before, root)
    finally:
        tidy(root, before)
