"""Parity (PyTorch reference) and the reduced-precision check (FP32-graph reference) are one judge.

A candidate graph is the digits model's FP32 export with a bias planted on one class's logit.
A small bias flips only samples whose two best classes the reference puts within the tie
tolerance of each other: the reduced-precision check used to forgive such a flip while parity
failed it. A large bias flips samples far from a tie: a real disagreement. Both ways of asking
must give the same verdict on the same inputs, and the near-tie rule must be what decides.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

import idlevit
from engines.ort import create_session
from idlevit.metadata import read_metadata
from idlevit.names import IMAGES, LOGITS
from validate.inputs import InputSpec, parity_inputs
from validate.judge import run_parity
from validate.reduced import REDUCED_NAME, check_reduced_precision

SPEC = InputSpec(data="digits", num_images=48, random_batches=2, batch_sizes=(8,))
TIE_RTOL = 5e-2
#: FP32 thresholds with the tie tolerance of INT8 (the rule under test) and room for the bias in the logit checks.
LIMITS = {"tie_rtol": TIE_RTOL, "atol": 10.0, "rtol": 10.0, "min_cosine": 0.0}


def reference_logits(onnx_path: Path) -> np.ndarray:
    meta = read_metadata(onnx_path)
    session = create_session(onnx_path)
    feeds = [feed for group in parity_inputs(meta, SPEC) for feed in group.feeds]
    return np.concatenate([session.run([LOGITS], {IMAGES: feed[IMAGES]})[0] for feed in feeds])


def plant_bias(source: Path, out: Path, cls: int, bias: float) -> Path:
    """``source`` with ``bias`` added to the logit of class ``cls`` (metadata kept)."""
    graph = gs.import_onnx(onnx.load(source))
    logits = graph.outputs[0]
    raw = gs.Variable("logits_before_planted_bias", dtype=np.float32)
    logits.inputs[0].outputs = [raw]
    offset = np.zeros(logits.shape[-1] if logits.shape else 10, dtype=np.float32)
    offset[cls] = bias
    graph.nodes.append(gs.Node("Add", inputs=[raw, gs.Constant("planted_bias", offset)], outputs=[logits]))
    model = gs.export_onnx(graph.cleanup().toposort())
    model.metadata_props.extend(onnx.load(source, load_external_data=False).metadata_props)
    onnx.save(model, out)
    return out


def verdicts(model: idlevit.IdleViT, fp32: Path, candidate: Path, tie_rtol: float) -> tuple[bool, bool]:
    limits = {**LIMITS, "tie_rtol": tie_rtol}
    parity = run_parity(candidate, model, inputs=SPEC, precision="fp32", overrides=limits, ort="cpu", progress=False)
    reduced = check_reduced_precision(fp32, candidate, inputs=SPEC, precision="fp32", overrides=limits)
    assert parity.backend("onnxruntime-cpu").samples == reduced.backend(REDUCED_NAME).samples
    return parity.passed, reduced.passed


@pytest.fixture(scope="module")
def closest_pair(digits_onnx: Path) -> tuple[int, float, float]:
    """(class to raise, bias that flips only near-tie samples to it, bias that flips samples far from a tie)."""
    logits = reference_logits(digits_onnx)
    rows = np.arange(len(logits))
    best = logits.argmax(1)
    tolerance = TIE_RTOL * np.abs(logits).max(1)
    for sample in np.argsort(np.sort(logits, 1)[:, -1] - np.sort(logits, 1)[:, -2]):
        cls = int(np.argsort(-logits[sample])[1])
        gap = logits[rows, best] - logits[:, cls]
        small = 1.05 * float(gap[sample])
        flipped = (gap > 0) & (gap < small)
        # every sample the small bias flips must be a near-tie by its own logits (else the plant proves nothing)
        if np.all(gap[flipped] <= tolerance[flipped]):
            break
    else:
        pytest.fail("no class whose bias flips only near-ties among the inputs")
    large = float(np.median(gap[gap > 0])) + 1.0  # flips about half of the samples, most far from any tie
    return cls, small, large


def test_a_near_tie_flip_gets_the_same_verdict_from_both(
    digits_model: idlevit.IdleViT, digits_onnx: Path, closest_pair: tuple[int, float, float], tmp_path: Path
) -> None:
    cls, small, _ = closest_pair
    candidate = plant_bias(digits_onnx, tmp_path / "near_tie.onnx", cls, small)
    assert verdicts(digits_model, digits_onnx, candidate, TIE_RTOL) == (True, True)
    # without the near-tie rule the same flip is a disagreement, for both
    assert verdicts(digits_model, digits_onnx, candidate, 0.0) == (False, False)


def test_a_real_flip_gets_the_same_verdict_from_both(
    digits_model: idlevit.IdleViT, digits_onnx: Path, closest_pair: tuple[int, float, float], tmp_path: Path
) -> None:
    cls, _, large = closest_pair
    candidate = plant_bias(digits_onnx, tmp_path / "far.onnx", cls, large)
    assert verdicts(digits_model, digits_onnx, candidate, TIE_RTOL) == (False, False)
