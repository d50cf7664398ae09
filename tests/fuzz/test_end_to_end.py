"""A few fuzzed command lines run as a user runs them: ``python -m <command>`` in a process of its own, real work
included (no stub), judged like the in-process runs (see :mod:`.fuzzing`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ..robustness.harness import Assets, command_env, snapshot
from .fuzzing import IMAGE, ONNX, Run, argv_for, check_run, fuzz, model_flag, parser_of, prepare, tidy

#: Commands whose real work is quick on the demo (package writing, one image classified).
QUICK = {"engines.package": (), "engines.infer": (IMAGE,)}


@pytest.mark.parametrize("command", sorted(QUICK))
@fuzz(scale=0.1)
@given(data=st.data())
def test_fuzzed_lines_in_a_process_of_their_own(command: str, data: st.DataObject, assets: Assets, tmp_path: Path):
    base = (*model_flag(command, ONNX), *QUICK[command])
    argv = data.draw(argv_for(parser_of(command), base), label="argv")
    root = tmp_path / "run"
    work = root / "a" / "b" / "work"
    if not work.exists():
        prepare(root, assets)
    before = snapshot(root)
    done = subprocess.run(
        [sys.executable, "-m", command, *argv], cwd=work, env=command_env(), capture_output=True, text=True, timeout=120
    )
    try:
        check_run(Run(command, argv, done.returncode, done.stdout, done.stderr), before, root)
    finally:
        tidy(root, before)
