"""Where ONNX Runtime spends its time on an exported graph, per op type (its profiler, summed).

Kernel time is summed per op type after ONNX Runtime's own fusions (so e.g. ``FusedMatMul`` and
``BiasGelu`` appear as such), to find what an exported graph wastes: gathers and scatters,
layout ops, shape arithmetic. ``python -m benchmarks.profile`` prints it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.ort import create_session
from idlevit.metadata import read_metadata
from idlevit.names import IMAGES

from .backends import default_threads, ort_options


@dataclass
class OpProfile:
    """Kernel time per op type: the sum over its nodes of each node's fastest profiled run."""

    ms: dict[str, float]  # op type -> milliseconds per run
    count: dict[str, int]  # op type -> kernels per run

    @property
    def total_ms(self) -> float:
        return sum(self.ms.values())

    def format(self, top: int = 20) -> str:
        lines = [f"{'op type':<28} {'ms/run':>9} {'share':>6} {'nodes':>6}"]
        for op, ms in sorted(self.ms.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"{op:<28} {ms:9.2f} {ms / self.total_ms:6.1%} {self.count[op]:6d}")
        lines.append(f"{'total kernel time':<28} {self.total_ms:9.2f}")
        return "\n".join(lines)


def profile_onnx(onnx_path: str | os.PathLike[str], batch: int = 8, runs: int = 5, threads: int = 0) -> OpProfile:
    """Profile ``runs`` runs (after one untimed run) of a random batch on the CPU."""
    size = read_metadata(onnx_path).img_size
    images = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="idlevit-profile-") as tmp:
        options = ort_options(profile_prefix=str(Path(tmp) / "ort"))
        session = create_session(onnx_path, threads=threads or default_threads(), options=options, integer_kernels=True)
        for _ in range(runs + 1):
            session.run(None, {IMAGES: images})
        with open(session.end_profiling()) as handle:
            events = json.load(handle)
    first = min((e for e in events if e["name"] == "model_run"), key=lambda e: e["ts"])
    untimed_end = first["ts"] + first["dur"]  # kernels of the first run (allocations, caches) are left out
    per_node: dict[str, list[float]] = {}
    op_of: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] > untimed_end:
            per_node.setdefault(event["name"], []).append(event["dur"] / 1e3)
            op_of[event["name"]] = event["args"]["op_name"]
    # each node's fastest run: the one least disturbed by other processes on the machine
    ms: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for node, durations in per_node.items():
        ms[op_of[node]] += min(durations)
        count[op_of[node]] += 1
    return OpProfile(dict(ms), dict(count))
