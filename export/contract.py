"""What every exported graph guarantees: opsets, the ops it never holds, the exporters that make it.

Plain constants (the commands list them in ``--help`` before anything heavy loads); the
exporter enforces them and the tests check them.
"""

from __future__ import annotations

#: Opsets whose export is tested; TopK/GatherElements/ScatterElements all exist from 11 on.
SUPPORTED_OPSETS = range(13, 21)
DEFAULT_OPSET = 17
#: Ops that must never appear: they break static shapes, batch-dynamism or TensorRT support.
FORBIDDEN_OPS = frozenset({"ScatterND", "NonZero", "Loop", "If"})
