"""LV-ViT IdleViT (lvvit_s, lvvit_m): loading, dense equivalence, export with BatchNorm (and normalisation) folded."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F

import idlevit
from engines.ort import create_session
from export.contract import EXPORTERS, TORCHSCRIPT
from export.exporter import export_onnx
from idlevit.errors import CheckFailed
from idlevit.metadata import read_metadata
from idlevit.model import IdleViT

from ..conftest import assert_onnx_matches_reference, make_model, run_module


def _lvvit(arch: str = "lvvit_s", **kwargs) -> idlevit.IdleViT:
    """Random LV-ViT with BatchNorm running stats far from identity, so folding is exercised."""
    model = make_model(arch, **kwargs)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in ("bn1", "bn2", "bn3"):
            bn = getattr(model.patch_embed, name)
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.weight.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=generator) * 0.1)
    return model


def _dense_lvvit(state: dict[str, torch.Tensor], images: torch.Tensor, heads: int, depth: int) -> torch.Tensor:
    """LV-ViT's dense forward written from its description, straight from the state dict."""

    def bn(x: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(
            x,
            state[f"{p}.running_mean"],
            state[f"{p}.running_var"],
            state[f"{p}.weight"],
            state[f"{p}.bias"],
            training=False,
            eps=1e-5,
        )

    def ln(x: torch.Tensor, p: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], state[f"{p}.weight"], state[f"{p}.bias"], eps=1e-5)

    x = F.relu(bn(F.conv2d(images, state["patch_embed.conv1.weight"], stride=2, padding=3), "patch_embed.bn1"))
    x = F.relu(bn(F.conv2d(x, state["patch_embed.conv2.weight"], padding=1), "patch_embed.bn2"))
    x = F.relu(bn(F.conv2d(x, state["patch_embed.conv3.weight"], padding=1), "patch_embed.bn3"))
    x = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=8)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + state["pos_embed"]
    batch, tokens, dim = x.shape
    for i in range(depth):
        p = f"blocks.{i}"
        qkv = F.linear(ln(x, f"{p}.norm1"), state[f"{p}.attn.qkv.weight"])  # no qkv bias
        q, k, v = qkv.reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (dim // heads) ** -0.5, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, tokens, dim)
        x = x + F.linear(out, state[f"{p}.attn.proj.weight"], state[f"{p}.attn.proj.bias"]) / 2.0
        hidden = F.gelu(F.linear(ln(x, f"{p}.norm2"), state[f"{p}.mlp.fc1.weight"], state[f"{p}.mlp.fc1.bias"]))
        x = x + F.linear(hidden, state[f"{p}.mlp.fc2.weight"], state[f"{p}.mlp.fc2.bias"]) / 2.0
    x = ln(x, "norm")
    logits = F.linear(x[:, 0], state["head.weight"], state["head.bias"])
    aux = F.linear(x[:, 1:], state["aux_head.weight"], state["aux_head.bias"]).max(dim=1).values
    return logits + 0.5 * aux


@pytest.fixture(scope="module")
def lvvit_s() -> idlevit.IdleViT:
    return _lvvit("lvvit_s")


@pytest.fixture(scope="module")
def lvvit_ckpt(lvvit_s: idlevit.IdleViT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lvvit") / "idlevit_lvvit_small_ratio0.7.pth"
    torch.save({"model": lvvit_s.state_dict(), "epoch": 29}, path)
    return path


def test_official_lvvit_checkpoint_round_trip(lvvit_s: idlevit.IdleViT, lvvit_ckpt: Path) -> None:
    loaded = idlevit.load_checkpoint(lvvit_ckpt)
    assert (loaded.cfg.name, loaded.cfg.img_size, loaded.cfg.patch_size) == ("lvvit_s", 224, 16)
    for key, value in lvvit_s.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # Published schedule: layers 4..15 with r x4, r² x4, r³ x4.
    assert loaded.idle_plan == dict(zip(range(4, 16), [137] * 4 + [96] * 4 + [67] * 4, strict=True))


@pytest.mark.parametrize("arch", ["lvvit_s", "lvvit_m"])
def test_ratio_one_equals_dense_lvvit(arch: str) -> None:
    cfg = idlevit.get_arch(arch)
    model = _lvvit(arch, keep_rate=1.0, img_size=64)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = _dense_lvvit(model.state_dict(), images, cfg.num_heads, cfg.depth)
        torch.testing.assert_close(model(images), want, atol=1e-4, rtol=1e-4)


def test_export_cli_matches_reference_with_batchnorm_folded(
    lvvit_s: idlevit.IdleViT, lvvit_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lvvit_s.onnx"
    result = run_module(
        "export.onnx",
        "--ckpt",
        str(lvvit_ckpt),
        "--with-indices",
        "--quiet",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    graph = onnx.load(out)
    assert "BatchNormalization" not in {n.op_type for n in graph.graph.node}
    assert read_metadata(out).keep_tokens == [137] * 4 + [96] * 4 + [67] * 4
    session = create_session(out)
    for batch in (1, 3):
        assert_onnx_matches_reference(lvvit_s, session, batch)


def _shallow_lvvit() -> idlevit.IdleViT:
    """lvvit_s cut to 4 blocks (idle layers 1..3) at 64 px: the conv stem and the idle pattern, traced fast."""
    return _lvvit("lvvit_s", img_size=64, num_classes=10, depth=4, idle_layers=[1, 2, 3], keep_ratios=[0.7, 0.5, 0.3])


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_folded_normalization_passes_the_export_check(tmp_path: Path, exporter: str) -> None:
    """conv1 pads, so the mean is subtracted from the pixels in front of it and only the scale is folded."""
    path = tmp_path / "folded.onnx"
    report = export_onnx(
        _shallow_lvvit(), path, fold_normalization=True, with_indices=True, exporter=exporter, progress=False
    )
    assert report is not None and report.passed  # pixels 0..255 against the reference with normalisation
    assert read_metadata(path).folded_normalization
    graph = onnx.load(path)
    assert [n.op_type for n in graph.graph.node if "images" in n.input] == ["Add"]  # pixels - 255 * mean
    assert "BatchNormalization" not in {n.op_type for n in graph.graph.node}


def test_mean_folded_into_the_padded_conv1_fails_the_export_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folding the mean into conv1's bias, as for an unpadded layer, is wrong along the borders: the check says so."""
    real_fold = IdleViT.fold_normalization
    monkeypatch.setattr(IdleViT, "fold_normalization", lambda self, mean_into_bias=None: real_fold(self, True))
    with pytest.raises(CheckFailed, match="does not compute the model"):
        export_onnx(_shallow_lvvit(), tmp_path / "wrong.onnx", fold_normalization=True, exporter=TORCHSCRIPT)
