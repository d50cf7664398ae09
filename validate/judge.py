"""The one judge: run a reference and backends on the same inputs and give a verdict.

Every "does this artefact still compute the model?" question is answered here, whatever the
reference: the PyTorch model (:func:`run_parity`, ``python -m validate.parity`` and the check
``python -m export.onnx`` runs on what it wrote; torch loads only then) or the FP32 graph in
ONNX Runtime (:mod:`validate.reduced`: the reduced-precision check, and parity of an engine or a
reduced graph where PyTorch is not installed). The runners go through Polygraphy's ``Comparator``; the comparison
functions, presets and near-tie/cascade bookkeeping are :mod:`validate.compare`'s, and the
verdict is a :class:`~validate.report.ParityReport`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from polygraphy.backend.base import BaseRunner
from polygraphy.comparator import Comparator
from polygraphy.exception import PolygraphyException

from engines.runtime import TENSORRT
from idlevit.cli import progress as progress_bar
from idlevit.errors import CheckFailed, ToolkitError
from idlevit.fileio import sha256_file
from idlevit.metadata import load_onnx, read_metadata
from idlevit.names import LOGITS, kept_indices_name

from .compare import compare_funcs
from .inputs import InputGroup, InputSpec, parity_inputs
from .presets import Thresholds, preset
from .report import GroupResult, ParityReport, aggregate
from .runners import backend_runners, engine_precision, polygraphy_quiet

if TYPE_CHECKING:
    from idlevit.model import IdleViT


def compare_runners(
    reference: BaseRunner,
    backends: Sequence[BaseRunner],
    thresholds: Mapping[str, Thresholds],
    idle_layers: Sequence[int],
    groups: Sequence[InputGroup],
    *,
    progress: bool = False,
    verbose: bool = False,
) -> list[GroupResult]:
    """Run ``reference`` and ``backends`` on every feed of ``groups``; judge each backend by its thresholds.

    The reference must return ``token_scores_<layer>`` beside its kept indices for the
    selection check to tell near-ties from real flips.
    """
    runners = [reference, *backends]
    funcs = compare_funcs(dict(thresholds), list(idle_layers))
    with polygraphy_quiet(verbose):
        feeds = progress_bar(
            [feed for group in groups for feed in group.feeds], enabled=progress, desc="compare", unit="batch"
        )
        try:
            stream = Comparator.run(runners, data_loader=feeds, streaming=True)
            pairs = [(0, i) for i in range(1, len(runners))]
            accuracy = Comparator.compare_accuracy(stream, comparisons=pairs, compare_func=funcs)
        except PolygraphyException as err:
            raise CheckFailed(
                f"a backend failed to run ({_first_line(err)}); rerun with --verbose for details"
            ) from None
        finally:
            feeds.close()
    return aggregate(accuracy, reference.name, dict(thresholds), list(groups))


def graph_outputs(onnx_path: str | os.PathLike[str]) -> list[str]:
    return [o.name for o in load_onnx(onnx_path, load_external_data=False).graph.output]


def run_parity(
    onnx_path: str | os.PathLike[str],
    reference: str | os.PathLike[str] | IdleViT,
    engine: str | os.PathLike[str] | None = None,
    *,
    inputs: InputSpec = InputSpec(),
    precision: str | None = None,
    overrides: Mapping[str, float | None] | None = None,
    ort: str = "auto",
    threads: int = 0,
    progress: bool = True,
    verbose: bool = False,
) -> ParityReport:
    """Compare every backend with the PyTorch reference: a checkpoint (rebuilt with the graph's schedule) or a model.

    Each backend is judged by the preset of its precision (``precision`` for all, else the ONNX
    metadata's for ONNX Runtime and the engine sidecar's for TensorRT), with ``overrides``
    (threshold field -> value) applied on top.
    """
    from .reference import TorchRunner, load_reference, reference_normalization  # lazy: the PyTorch side

    meta = read_metadata(onnx_path)
    outputs = graph_outputs(onnx_path)
    if LOGITS not in outputs:
        raise ToolkitError(f"{os.fspath(onnx_path)} has no '{LOGITS}' output; export it with `python -m export.onnx`")
    from_file = isinstance(reference, (str, os.PathLike))
    model = load_reference(reference, meta) if from_file else reference
    backends = backend_runners(onnx_path, engine, ort, threads)
    precisions = {
        runner.name: precision
        or (engine_precision(engine, onnx_path) if runner.name == TENSORRT else None)
        or meta.precision
        for runner in backends
    }
    thresholds = {name: preset(p).with_overrides(**(overrides or {})) for name, p in precisions.items()}
    torch_runner = TorchRunner(
        model, with_indices=True, with_scores=True, threads=threads, normalize=reference_normalization(meta)
    )
    with polygraphy_quiet(verbose):
        groups = parity_inputs(meta, inputs)
    rows = compare_runners(
        torch_runner, backends, thresholds, meta.idle_layers, groups, progress=progress, verbose=verbose
    )
    setup = {
        "onnx": os.fspath(onnx_path),
        "onnx_sha256": sha256_file(onnx_path),
        "checkpoint": os.fspath(reference) if from_file else "in memory",
        "checkpoint_recorded": meta.checkpoint,
        "engine": None if engine is None else os.fspath(engine),
        "arch": meta.arch,
        "precision": precisions,
        "reference": torch_runner.name,
        "backends": list(precisions),
        "idle_layers": list(meta.idle_layers),
        "keep_tokens": list(meta.keep_tokens),
        "kept_indices_checked": [layer for layer in meta.idle_layers if kept_indices_name(layer) in outputs],
        "inputs": [group_setup(group) for group in groups],
    }
    return ParityReport(setup, thresholds, rows)


def group_setup(group: InputGroup) -> dict[str, object]:
    """What a report records about one group of inputs."""
    return {
        "kind": group.kind,
        "source": group.source,
        "batch": group.batch,
        "batches": len(group.feeds),
        "images": group.images,
    }


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(err).__name__
