"""The PyTorch reference runner: graph-named outputs, the scores the idle layers rank by, pixels for folded graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import idlevit
from engines.ort import create_session, cuda_usable, providers_for
from export.exporter import build_metadata
from idlevit.data import normalize
from idlevit.errors import CheckpointError
from idlevit.metadata import ExportMetadata, read_metadata
from idlevit.names import token_scores_name
from validate.reference import TorchRunner, load_reference, reference_normalization

from ..conftest import assert_onnx_matches_reference


def test_outputs_follow_the_graph_and_scores_explain_the_selection(digits_model: idlevit.IdleViT) -> None:
    images = np.random.default_rng(1).uniform(-2, 2, (3, 3, 32, 32)).astype(np.float32)
    with TorchRunner(digits_model, with_scores=True, threads=1) as runner:
        outputs = runner.infer({"images": images})
        assert runner.last_inference_time() > 0
    plan = digits_model.idle_plan
    assert list(outputs) == ["logits", *(f"kept_indices_{i}" for i in plan), *(token_scores_name(i) for i in plan)]
    with torch.no_grad():
        assert np.array_equal(outputs["logits"], digits_model(torch.from_numpy(images)).numpy())
    for layer, k in plan.items():
        scores, kept = outputs[token_scores_name(layer)], outputs[f"kept_indices_{layer}"]
        assert scores.shape == (3, digits_model.cfg.num_tokens)
        # the captured scores are the ones ranked: their top-k (+1 for CLS) is the kept set
        top = np.argsort(-scores, axis=1)[:, :k] + 1
        assert np.array_equal(np.sort(top, axis=1), np.sort(kept[:, 1:], axis=1))
        assert (kept[:, 0] == 0).all()


def test_reference_follows_the_exported_schedule(digits_ckpt: Path, digits_onnx: Path) -> None:
    meta = read_metadata(digits_onnx)
    meta.keep_ratios = [0.5] * len(meta.idle_layers)  # not the default r, r², r³ pattern
    meta.keep_tokens = [32] * len(meta.idle_layers)
    model = load_reference(digits_ckpt, meta)
    assert list(model.idle_plan) == meta.idle_layers and list(model.idle_plan.values()) == [32] * 9
    meta.keep_tokens = [33] * len(meta.idle_layers)  # a record that contradicts its own ratios
    with pytest.raises(CheckpointError, match="kept tokens"):
        load_reference(digits_ckpt, meta)


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_usable(), reason="ONNX Runtime on CUDA needs onnxruntime-gpu and a CUDA GPU")
def test_onnxruntime_cuda_matches_the_reference(digits_model: idlevit.IdleViT, digits_onnx: Path) -> None:
    session = create_session(digits_onnx, providers_for("cuda"))
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    assert_onnx_matches_reference(digits_model, session, batch=4)


def test_reference_normalises_the_pixels_a_folded_graph_takes(digits_model: idlevit.IdleViT) -> None:
    """With ``normalize`` the runner takes pixels 0..255 and gives the logits of the normalised images."""
    meta = read_metadata_of_folded(digits_model)
    pixels = np.random.default_rng(2).integers(0, 256, (2, 3, 32, 32)).astype(np.float32)
    normalised = normalize(torch.from_numpy(pixels) / 255.0, meta.mean, meta.std).numpy()
    assert reference_normalization(meta) == (list(meta.mean), list(meta.std))
    with TorchRunner(digits_model, with_indices=False, normalize=reference_normalization(meta)) as folded:
        from_pixels = folded.infer({"images": pixels})["logits"]
    with TorchRunner(digits_model, with_indices=False) as plain:
        assert np.array_equal(from_pixels, plain.infer({"images": normalised})["logits"])
        assert not np.allclose(plain.infer({"images": pixels})["logits"], from_pixels, atol=1e-3)
    meta.folded_normalization = False
    assert reference_normalization(meta) is None


def read_metadata_of_folded(model: idlevit.IdleViT) -> ExportMetadata:
    """The metadata an export with --fold-normalization records for ``model`` (no graph needed)."""
    meta = build_metadata(model, 18, None, False, "digits_tiny.pth", "", folded_normalization=True)
    assert meta.input_config["std"] == pytest.approx((1 / 255,) * 3) and meta.data_config["std"] == model.cfg.std
    return meta
