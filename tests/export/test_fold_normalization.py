"""--fold-normalization: graphs that take RGB pixels 0..255, judged against the reference with normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from engines.ort import create_session
from export.contract import EXPORTERS, TORCHSCRIPT
from export.exporter import export_onnx
from idlevit.data import normalize
from idlevit.errors import CheckFailed
from idlevit.metadata import read_metadata
from idlevit.model import IdleViT
from idlevit.stem import fold_pixel_normalization

from .conftest import shallow_model


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_folded_deit_takes_pixels_and_passes_the_export_check(tmp_path: Path, exporter: str) -> None:
    model = shallow_model()
    path = tmp_path / "folded.onnx"
    report = export_onnx(
        model, path, fold_normalization=True, with_indices=True, exporter=exporter, verify_batch=3, progress=False
    )
    assert report is not None and report.passed  # FP32 thresholds, kept tokens included
    assert "[0.00, 255.00]" in report.setup["inputs"][0]["source"]  # the check fed pixels 0..255
    meta = read_metadata(path)
    assert meta.folded_normalization and meta.mean == pytest.approx(list(model.cfg.mean))
    assert meta.input_config["mean"] == (0.0, 0.0, 0.0) and meta.input_config["std"] == pytest.approx((1 / 255,) * 3)
    # DeiT's patch projection does not pad: the fold is exact, the image goes straight into the Conv
    graph = onnx.load(path)
    assert [n.op_type for n in graph.graph.node if "images" in n.input] == ["Conv"]
    # the same logits as the plain graph on the same images, normalised
    pixels = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(3)).float()
    plain = tmp_path / "plain.onnx"
    export_onnx(model, plain, exporter=exporter, verify_batch=0, progress=False)
    folded_logits = create_session(path).run(["logits"], {"images": pixels.numpy()})[0]
    normalised = normalize(pixels / 255, model.cfg.mean, model.cfg.std).numpy()
    np.testing.assert_allclose(folded_logits, create_session(plain).run(None, {"images": normalised})[0], atol=1e-5)


def test_a_wrong_fold_fails_the_export_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RGB and BGR confused in the fold: the graph is written, then the check refuses it."""

    def fold_channels_swapped(self: IdleViT, mean_into_bias: bool | None = None) -> None:
        self.pixel_offset = fold_pixel_normalization(self.first_conv(), self.cfg.mean[::-1], self.cfg.std[::-1])

    monkeypatch.setattr(IdleViT, "fold_normalization", fold_channels_swapped)
    path = tmp_path / "wrong.onnx"
    with pytest.raises(CheckFailed, match="does not compute the model: .*logits") as failed:
        export_onnx(shallow_model(), path, fold_normalization=True, exporter=TORCHSCRIPT, progress=False)
    assert f"{path} is kept for inspection" in str(failed.value) and path.is_file()


def test_fold_keeps_the_mean_out_of_a_padded_convolution() -> None:
    """Zero padding of the normalised image is the *mean* pixel: folding it into the bias is wrong at the borders."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 7, stride=2, padding=3)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pixels = torch.randint(0, 256, (1, 3, 16, 16)).float()
    want = conv(normalize(pixels / 255, mean, std))
    exact, into_bias = torch.nn.Conv2d(3, 8, 7, stride=2, padding=3), torch.nn.Conv2d(3, 8, 7, stride=2, padding=3)
    exact.load_state_dict(conv.state_dict())
    into_bias.load_state_dict(conv.state_dict())
    offset = fold_pixel_normalization(exact, mean, std)
    assert offset is not None and offset.shape == (1, 3, 1, 1)
    torch.testing.assert_close(exact(pixels + offset), want, atol=1e-5, rtol=1e-5)
    assert fold_pixel_normalization(into_bias, mean, std, mean_into_bias=True) is None
    wrong = into_bias(pixels)
    inside = (..., slice(2, -1), slice(2, -1))  # outputs whose 7x7 window (stride 2, pad 3) reads no padding
    torch.testing.assert_close(wrong[inside], want[inside], atol=1e-5, rtol=1e-5)
    assert (wrong - want).abs().amax() > 0.1  # along the borders: not
