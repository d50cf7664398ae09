"""What every exported graph guarantees: opsets, the ops it never holds, the exporters that make it.

Plain constants (the commands list them in ``--help`` before anything heavy loads); the
exporter enforces them and the tests check them.

Two exporters trace the export forward; after the graph clean-up both give the same op contract
(static TopK K, GatherElements/ScatterElements over int64 indices, none of :data:`FORBIDDEN_OPS`,
dynamic batch, named nodes, readable I/O names):

* ``dynamo`` (default): ``torch.onnx.export(dynamo=True)``, built on ``torch.export``. Its op
  library is written for opset 18, so it serves 18 and newer (up-conversion); it does not go below.
* ``torchscript``: ``torch.onnx.export(dynamo=False)``, the TorchScript tracer, deprecated by
  PyTorch and kept while torch ships it (opsets 13 to 20, e.g. opset 17 for TensorRT 8.6).

Parsers: TensorRT 10.0-10.7 (JetPack 6: TensorRT 10.3) take opsets up to 20, TensorRT 10.8+ and
TensorRT-RTX up to 22; the default opset 18 suits all of them.
"""

from __future__ import annotations

DYNAMO, TORCHSCRIPT = "dynamo", "torchscript"
#: Exporters by name, the default first.
EXPORTERS = (DYNAMO, TORCHSCRIPT)
DEFAULT_EXPORTER = DYNAMO
#: Opsets each exporter serves (tested); TopK/GatherElements/ScatterElements all exist from 11 on.
EXPORTER_OPSETS = {DYNAMO: range(18, 23), TORCHSCRIPT: range(13, 21)}
#: Every opset some exporter serves (what ``--opset`` accepts before the exporter is checked).
SUPPORTED_OPSETS = range(min(r.start for r in EXPORTER_OPSETS.values()), max(r.stop for r in EXPORTER_OPSETS.values()))
DEFAULT_OPSET = 18
#: Ops that must never appear: they break static shapes, batch-dynamism or TensorRT support.
FORBIDDEN_OPS = frozenset({"ScatterND", "NonZero", "Loop", "If"})


def opset_range(exporter: str) -> str:
    """``"18..22"``: the opsets ``exporter`` serves, as ``--help`` and errors print them."""
    served = EXPORTER_OPSETS[exporter]
    return f"{served.start}..{served.stop - 1}"


def opset_problem(exporter: str, opset: int) -> str | None:
    """Why ``exporter`` cannot export at ``opset`` (one line, with the fix), or None when it can."""
    if exporter not in EXPORTER_OPSETS:
        return f"unknown exporter {exporter!r}; choose one of: {', '.join(EXPORTERS)}"
    if opset in EXPORTER_OPSETS[exporter]:
        return None
    others = [name for name in EXPORTERS if name != exporter and opset in EXPORTER_OPSETS[name]]
    fix = f"pass --exporter {others[0]} (opsets {opset_range(others[0])})" if others else "choose another --opset"
    return f"the {exporter} exporter does not export opset {opset} (it serves {opset_range(exporter)}); {fix}"
