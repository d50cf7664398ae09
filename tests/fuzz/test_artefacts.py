"""Artefact fields, mutated one at a time (ONNX metadata, engine sidecar, package manifest), read by the commands
that trust them: each run ends as documented (see :mod:`.fuzzing`), and a package replaced with --force touches
nothing outside its folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ..robustness.harness import Assets, snapshot
from .fuzzing import (
    CKPT,
    ENGINE,
    IMAGE,
    ONNX,
    check_run,
    fuzz,
    model_flag,
    mutated,
    prepare,
    run_in_process,
    tidy,
)

#: The commands that read each artefact, and the rest of their line ({model}: the mutated file's flag).
METADATA_READERS = {
    "engines.package": ["{model}", "--out", "pkg"],
    "engines.infer": ["{model}", IMAGE],
    "validate.parity": ["{model}", "--ckpt", CKPT, "--ort", "cpu"],
    "export.trt": ["{model}", "--no-check"],
}
SIDECAR_READERS = {
    "engines.package": ["{model}", "--out", "pkg"],
    "engines.infer": ["{model}", IMAGE],
}


def line(command: str, template: list[str], model: str) -> list[str]:
    return [part for item in template for part in (model_flag(command, model) if item == "{model}" else [item])]


def _folder(tmp_path: Path, assets: Assets) -> tuple[Path, Path]:
    root = tmp_path / "run"
    work = root / "a" / "b" / "work"
    if not work.exists():
        prepare(root, assets)
    return root, work


def _run(command: str, argv: list[str], root: Path, work: Path, **check: Any) -> None:
    before = snapshot(root)
    try:
        check_run(run_in_process(command, argv, work), before, root, **check)
    finally:
        tidy(root, before)


@pytest.mark.parametrize("command", sorted(METADATA_READERS))
@fuzz(scale=0.5)
@given(data=st.data())
def test_mutated_metadata_fields(command: str, data: st.DataObject, assets: Assets, stubbed: None, tmp_path: Path):
    root, work = _folder(tmp_path, assets)
    model = onnx.load(work / ONNX)
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    odd = data.draw(mutated(props), label="metadata")
    del model.metadata_props[:]
    for key, value in odd.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(model, work / "f.onnx")
    _run(command, line(command, METADATA_READERS[command], "f.onnx"), root, work)


@pytest.mark.parametrize("command", sorted(SIDECAR_READERS))
@fuzz(scale=0.5)
@given(data=st.data())
def test_mutated_sidecar_fields(command: str, data: st.DataObject, assets: Assets, stubbed: None, tmp_path: Path):
    root, work = _folder(tmp_path, assets)
    sidecar = json.loads((work / (ENGINE + ".json")).read_text())
    odd = data.draw(mutated(sidecar), label="sidecar")
    shutil.copyfile(work / ENGINE, work / "f.engine")
    (work / "f.engine.json").write_text(json.dumps(odd))
    _run(command, line(command, SIDECAR_READERS[command], "f.engine"), root, work)


@fuzz(scale=1.0)
@given(data=st.data())
def test_mutated_package_manifest(data: st.DataObject, assets: Assets, stubbed: None, tmp_path: Path) -> None:
    """``engines.package m.onnx --out pkg --force`` over an earlier package whose manifest has one odd field: it
    rewrites pkg/ or refuses, and nothing outside pkg/ changes (a victim file beside it included)."""
    root, work = _folder(tmp_path, assets)
    pristine = root / "pkg.orig"
    if not pristine.exists():
        (work.parent / "victim.txt").write_text("not the package's\n")
        result = run_in_process("engines.package", [*model_flag("engines.package", ONNX), "--out", "pkg"], work)
        assert result.code == 0, result.shown()
        shutil.move(work / "pkg", pristine)
    shutil.copytree(pristine, work / "pkg", symlinks=True)
    manifest_path = work / "pkg" / ".idlevit-package.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(data.draw(mutated(manifest), label="manifest")))
    argv = [*model_flag("engines.package", ONNX), "--out", "pkg", "--force"]
    try:
        _run("engines.package", argv, root, work, rewrites=os.fspath(Path("a/b/work/pkg")))
    finally:
        shutil.rmtree(work / "pkg", ignore_errors=True)
