"""Choices of the benchmark commands (plain Python: ``--help`` answers before torch loads)."""

from __future__ import annotations

#: Base keep rates timed by default (the published r, r², r³ schedules); the dense model is always added.
DEFAULT_KEEP_RATES = (0.5, 0.6, 0.7, 0.8, 0.9)
#: Backends in the order they are timed; ``benchmarks.backends.BACKENDS`` defines each one.
BACKEND_NAMES = ("pytorch", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")
#: Graphs ONNX Runtime times, each for every keep rate and the dense model: the default export
#: (dynamo exporter), the TorchScript exporter's, and the default export optimised for ONNX Runtime.
DYNAMO_GRAPH, TORCHSCRIPT_GRAPH, OPTIMIZED_GRAPH = "dynamo", "torchscript", "optimized"
GRAPH_NAMES = (DYNAMO_GRAPH, TORCHSCRIPT_GRAPH, OPTIMIZED_GRAPH)
DEFAULT_GRAPHS = (DYNAMO_GRAPH, OPTIMIZED_GRAPH)
