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


def test_pickle_that_runs_code_is_refused_naming_the_global(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = {"model": {"w": torch.zeros(1)}, "payload": _RunsCode(marker)}
    zipped, legacy = tmp_path / "evil_zip.pth", tmp_path / "evil_legacy.pth"
    torch.save(payload, zipped)
    torch.save(payload, legacy, _use_new_zipfile_serialization=False)
    for candidate in (zipped, legacy):
        with pytest.raises(idlevit.UnsafeCheckpointError, match="refused to load") as info:
            idlevit.read_checkpoint(candidate)
        assert f"run {os.system.__module__}.system, which is not on the allow-list" in str(info.value)
    # A plain pickle is not a torch.save file at all: refused before anything is unpickled.
    plain = tmp_path / "evil.pkl"
    with open(plain, "wb") as handle:
        pickle.dump(payload, handle)
    with pytest.raises(idlevit.CheckpointError, match="not a PyTorch checkpoint"):
        idlevit.read_checkpoint(plain)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (os.urandom(4096), "not a PyTorch checkpoint"), (b"\x08\x07\x12\x0f", "not a PyTorch")],
    ids=["empty", "random-bytes", "onnx-like"],
)
def test_foreign_bytes_are_not_a_checkpoint(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(idlevit.CheckpointError, match=message):
        idlevit.read_checkpoint(path)


def test_a_folder_is_named_as_a_folder(tmp_path: Path) -> None:
    (tmp_path / "model.pth").mkdir()
    with pytest.raises(idlevit.CheckpointError, match="is a folder"):
        idlevit.read_checkpoint(tmp_path / "model.pth")


def _edited(model: idlevit.IdleViT, path: Path, **changes) -> Path:
    state = dict(model.state_dict())
    extras = changes.pop("extras", {})
    state.update(changes)
    torch.save({"model": state, **extras}, path)
    return path


def test_non_finite_weights_are_refused_naming_the_first_tensor(tmp_path: Path, deit_tiny: idlevit.IdleViT) -> None:
    qkv = deit_tiny.state_dict()["blocks.4.attn.qkv.weight"].clone()
    qkv[0, 0], qkv[1, 1] = float("nan"), float("inf")
    path = _edited(deit_tiny, tmp_path / "nan.pth", **{"blocks.4.attn.qkv.weight": qkv})
    with pytest.raises(idlevit.CheckpointError, match=r"tensor blocks\.4\.attn\.qkv\.weight holds 2 NaN or infinite"):
        idlevit.load_checkpoint(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cls_token": torch.tensor(1.0)}, r"cls_token has shape \(\), not \(1, 1, width\)"),
        ({"head.weight": torch.zeros(0, 192), "head.bias": torch.zeros(0)}, "the classifier has no classes"),
        ({"pos_embed": torch.zeros(1, 51, 192)}, r"pos_embed has shape \(1, 51, 192\)"),
        ({"extras": {"data_config": "imagenet"}}, "data_config is str, not a mapping"),
        ({"extras": {"data_config": {"mean": "abc"}}}, "data_config mean is 'abc', not three finite numbers"),
        ({"extras": {"data_config": {"std": [0, 0, 0]}}}, "data_config std is \\[0, 0, 0\\], not three positive"),
        ({"extras": {"arch": 7}}, "arch entry is int"),
    ],
    ids=[
        "scalar-cls-token",
        "zero-class-head",
        "non-square-pos-embed",
        "data-config-text",
        "mean-text",
        "std-0",
        "arch",
    ],
)
def test_malformed_checkpoints_are_refused(
    tmp_path: Path, deit_tiny: idlevit.IdleViT, changes: dict, message: str
) -> None:
    path = _edited(deit_tiny, tmp_path / "bad.pth", **changes)
    with pytest.raises(idlevit.ToolkitError, match=message):
        idlevit.load_checkpoint(path)


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
