"""Static checks of an exported graph against a TensorRT target, before any build.

Two sources, one list of findings:

* the toolkit's own lint, for the facts that decide whether an IdleViT graph builds and keeps
  its token selection: TopK ``sorted=1`` and a static K <= 3840, the opset inside the target's
  range, ScatterElements without a reduction, custom-op nodes refused by TensorRT-RTX and
  carrying ``plugin_namespace`` for TensorRT < 10.10;
* ``trtcheck`` (operator matrix, dynamic shapes, control flow), whose newest target is 10.3.
  It warns on every INT64 initializer (``TRT-DTYPE-INT64-WEIGHTS``); TensorRT 10 takes INT64
  natively and the selection indices must stay INT64, so those are counted, not shown.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from idlevit.chatter import captured
from idlevit.errors import CheckFailed, ToolkitError
from idlevit.metadata import ExportMetadata

from .target import MIN_OPSET, TOPK_MAX_K, Target

ERROR, WARNING, INFO = "error", "warning", "info"
_DEFAULT_DOMAINS = ("", "ai.onnx")
#: trtcheck rules known to be wrong for TensorRT 10+ graphs like ours (see the module docstring).
TRTCHECK_FALSE_POSITIVES = frozenset({"TRT-DTYPE-INT64-WEIGHTS"})
#: trtcheck's newest target; later TensorRT lines are checked against it.
TRTCHECK_TARGETS = ((10, 3), (10, 0), (8, 6), (8, 0))


@dataclass
class Finding:
    """One static-check result."""

    rule: str  # e.g. "topk-k-max" or "trtcheck:TRT-OP-UNSUPPORTED"
    severity: str  # "error" fails the check; "warning" and "info" are shown
    node: str
    message: str

    def __str__(self) -> str:
        where = f" [{self.node}]" if self.node else ""
        return f"{self.severity}: {self.rule}{where}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def lint_graph(model: onnx.ModelProto, target: Target) -> list[Finding]:
    """The toolkit's own checks of ``model`` for ``target``."""
    findings = _check_opset(model, target)
    constants = _constant_values(model)
    for node in model.graph.node:
        if node.op_type == "TopK" and node.domain in _DEFAULT_DOMAINS:
            findings += _check_topk(node, constants)
        elif node.op_type == "ScatterElements" and node.domain in _DEFAULT_DOMAINS:
            reduction = _attr(node, "reduction", b"none")
            if reduction not in (b"none", "none"):
                findings.append(
                    Finding(
                        "scatter-reduction",
                        ERROR,
                        node.name,
                        f"ScatterElements with reduction={reduction!r}: the write-back must replace tokens, "
                        "and TensorRT's scatter supports no reduction here",
                    )
                )
        elif node.domain not in _DEFAULT_DOMAINS:
            findings += _check_custom_op(node, target)
    return findings


def check_schedule_matches(model: onnx.ModelProto, meta: ExportMetadata, where: str) -> None:
    """The graph's TopK nodes are the idle layers its metadata records: one each, K = kept tokens + CLS.

    A graph whose metadata was copied from another file (or edited) would otherwise build an
    engine that every later step describes wrongly.
    """
    constants = _constant_values(model)
    ks = [
        _static_k(node, constants)
        for node in model.graph.node
        if node.op_type == "TopK" and node.domain in _DEFAULT_DOMAINS and len(node.input) > 1
    ]
    want = [k + 1 for k in meta.keep_tokens]
    if ks != want:
        raise ToolkitError(
            f"{where}'s graph does not match its idlevit.* metadata: {len(ks)} TopK node(s) with K {ks}, but the "
            f"metadata records idle layers {list(meta.idle_layers)} keeping {list(meta.keep_tokens)} tokens "
            f"(K {want}, CLS included); re-export the checkpoint with `python -m export.onnx`"
        )


def _check_opset(model: onnx.ModelProto, target: Target) -> list[Finding]:
    opset = next((op.version for op in model.opset_import if op.domain in _DEFAULT_DOMAINS), 0)
    if MIN_OPSET <= opset <= target.max_opset:
        return []
    # the default exporter (torch.export) writes opset 18 and newer; older parsers need the TorchScript one
    fix = "--opset 18" if target.max_opset >= 18 else f"--exporter torchscript --opset {target.max_opset}"
    return [
        Finding(
            "opset-range",
            ERROR,
            "",
            f"opset {opset} is outside {target.label}'s parser range {MIN_OPSET}..{target.max_opset}; "
            f"re-export with `python -m export.onnx {fix}`",
        )
    ]


def _check_topk(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> list[Finding]:
    findings = []
    if int(_attr(node, "sorted", 1)) != 1:
        findings.append(
            Finding("topk-sorted", ERROR, node.name, "TopK has sorted=0, which TensorRT rejects; export with sorted=1")
        )
    k = _static_k(node, constants)
    if k is None:
        findings.append(
            Finding("topk-static-k", ERROR, node.name, "TopK's K is not a constant; TensorRT needs a build-time K")
        )
    elif k > TOPK_MAX_K:
        findings.append(
            Finding(
                "topk-k-max",
                ERROR,
                node.name,
                f"TopK keeps K={k} tokens but TensorRT allows K <= {TOPK_MAX_K}; "
                "lower the keep ratio or the image size",
            )
        )
    return findings


def _static_k(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> int | None:
    """A TopK's K when it is a constant of the graph, else None."""
    k = constants.get(node.input[1]) if len(node.input) > 1 else None
    return None if k is None else int(np.asarray(k).reshape(-1)[0])


def _check_custom_op(node: onnx.NodeProto, target: Target) -> list[Finding]:
    op = f"{node.domain}::{node.op_type}"
    if not target.takes_plugins:
        return [
            Finding(
                "plugin-on-rtx",
                ERROR,
                node.name,
                f"{op} needs a TensorRT plugin and {target.runtime} takes none; export without --plugin",
            )
        ]
    if target.needs_plugin_namespace_attr and _attr(node, "plugin_namespace", None) is None:
        return [
            Finding(
                "plugin-namespace",
                ERROR,
                node.name,
                f"{op} has no plugin_namespace attribute, which {target.label}'s parser needs to find the "
                "plugin (TensorRT < 10.10); re-export with --plugin from this toolkit",
            )
        ]
    return []


def _attr(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            value = _attr(node, "value", None)
            if value is not None:
                values[node.output[0]] = numpy_helper.to_array(value)
    return values


def trtcheck_target(target: Target) -> str:
    """The trtcheck target closest to (not above) ``target``; RTX and newer lines map to 10.3."""
    if target.is_rtx:
        return "10.3"
    for version in TRTCHECK_TARGETS:
        if target.version[:2] >= version:
            return ".".join(map(str, version))
    return "8.0"


def run_trtcheck(model: onnx.ModelProto, target: Target, plugin_domains: tuple[str, ...] = ()) -> list[Finding]:
    """trtcheck's findings as :class:`Finding`; known false positives folded into one info line."""
    from trtcheck.analyzer import Analyzer, AnalyzerConfig  # lazy: trtcheck is optional

    config = AnalyzerConfig(
        target_trt=trtcheck_target(target),
        discover_entry_point_plugins=False,
        plugin_domains=list(plugin_domains),
    )
    report = Analyzer(config).analyze_model(model)
    findings: list[Finding] = []
    ignored: Counter[str] = Counter()
    severity = {"critical": ERROR, "warning": WARNING, "info": INFO}
    for issue in report.issues:
        if issue.rule_id in TRTCHECK_FALSE_POSITIVES:
            ignored[issue.rule_id] += 1
            continue
        findings.append(
            Finding(f"trtcheck:{issue.rule_id}", severity[issue.severity.value], issue.node_name, issue.message)
        )
    for rule, count in ignored.items():
        findings.append(
            Finding(
                f"trtcheck:{rule}",
                INFO,
                "",
                f"{count} findings not shown: TensorRT 10+ takes INT64 natively (trtcheck's newest target is 10.3)",
            )
        )
    return findings


def static_checks(model: onnx.ModelProto, target: Target, with_trtcheck: bool = True) -> list[Finding]:
    """The toolkit's lint plus trtcheck (custom domains in the graph are declared as plugin-backed)."""
    findings = lint_graph(model, target)
    if with_trtcheck:
        domains = tuple(sorted({n.domain for n in model.graph.node if n.domain not in _DEFAULT_DOMAINS}))
        with captured(step="trtcheck"):
            findings += run_trtcheck(model, target, domains if target.takes_plugins else ())
    return findings


def raise_on_errors(findings: list[Finding]) -> None:
    """One-line failure naming the first error (all of them are printed by the caller)."""
    errors = [f for f in findings if f.severity == ERROR]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise CheckFailed(f"static check failed: {errors[0]}{more}")
