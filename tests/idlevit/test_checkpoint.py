"""Checkpoint reading: official layout round trip, arch inference, and the documented errors."""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
from pathlib import Path

import pytest
import torch

import idlevit
from idlevit.errors import EXIT_BAD_INPUT

from ..conftest import run_module


def write_official(model: idlevit.IdleViT, path: Path, prefix: str = "") -> None:
    """The layout the published files use: model, optimizer, epoch and an argparse Namespace."""
    state = {prefix + k: v for k, v in model.state_dict().items()}
    args = argparse.Namespace(model="deit_small_patch16_224", lr=5e-4, keep_rate=0.7)
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 29, "args": args}, path)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_checkpoint_round_trip_is_bit_exact(tmp_path: Path, deit_small: idlevit.IdleViT, prefix: str) -> None:
    path = tmp_path / "idlevit_deit_small_ratio0.7.pth"
    write_official(deit_small, path, prefix)
    loaded = idlevit.load_checkpoint(path)
    assert loaded.cfg.name == "deit_small"
    assert loaded.idle_plan == deit_small.idle_plan
    for key, value in deit_small.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_bare_state_dict_and_geometry_are_inferred(tmp_path: Path, deit_tiny: idlevit.IdleViT) -> None:
    path = tmp_path / "bare.pth"
    torch.save(deit_tiny.state_dict(), path)
    loaded = idlevit.load_checkpoint(path)
    assert (loaded.cfg.name, loaded.cfg.img_size, loaded.cfg.patch_size, loaded.cfg.num_classes) == (
        "deit_tiny",
        64,
        8,
        10,
    )
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images), deit_tiny(images))


def test_save_checkpoint_writes_the_official_layout(tmp_path: Path, deit_tiny: idlevit.IdleViT) -> None:
    path = idlevit.save_checkpoint(deit_tiny, tmp_path / "out.pth", epoch=3)
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"model", "arch", "data_config", "epoch"}
    assert raw["arch"] == "deit_tiny"


def test_truncated_file_is_reported(tmp_path: Path, deit_tiny: idlevit.IdleViT) -> None:
    full = tmp_path / "full.pth"
    torch.save({"model": deit_tiny.state_dict()}, full)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(idlevit.CheckpointError, match="truncated or not a torch.save file"):
        idlevit.load_checkpoint(cut)


def test_wrong_arch_names_keys_and_likely_arch(tmp_path: Path, deit_tiny: idlevit.IdleViT) -> None:
    path = tmp_path / "tiny.pth"
    torch.save({"model": deit_tiny.state_dict()}, path)
    with pytest.raises(idlevit.CheckpointError) as info:
        idlevit.load_checkpoint(path, arch="lvvit_s")
    message = str(info.value)
    assert "missing aux_head.bias, aux_head.weight" in message
    assert "unexpected" in message and "shape-mismatched" in message
    assert "--arch deit_tiny" in message


class _RunsCode:
    """Pickles to a call of os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": {"w": torch.zeros(1)}, "payload": _RunsCode(marker)}, handle)
    # torch.save's zip format with the same payload must be refused too.
    zipped = tmp_path / "evil_zip.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _RunsCode(marker)}, zipped)
    for candidate in (path, zipped):
        with pytest.raises(idlevit.UnsafeCheckpointError, match="refused to load"):
            idlevit.read_checkpoint(candidate)
    assert not marker.exists()


def _export_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_module("export.onnx", "--quiet", "--no-verify", *args, cwd=cwd, timeout=300)


def test_cli_errors_are_one_line_with_exit_code(tmp_path: Path, deit_tiny: idlevit.IdleViT) -> None:
    good = tmp_path / "tiny.pth"
    torch.save({"model": deit_tiny.state_dict()}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:1000])
    cases = [
        (("--ckpt", str(cut)), "truncated"),
        (("--ckpt", str(good), "--arch", "deit_small"), "--arch deit_tiny"),
        (("--ckpt", str(good), "--keep-rate", "1.5"), "outside (0, 1]"),
        (("--ckpt", str(tmp_path / "absent.pth")), "does not exist"),
    ]
    for args, needle in cases:
        result = _export_cli(*args, cwd=tmp_path)
        assert result.returncode == EXIT_BAD_INPUT, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
