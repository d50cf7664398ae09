"""Command-line options shared by the validate commands (plain argparse: parsed before anything heavy loads)."""

from __future__ import annotations

import argparse
from pathlib import Path

from idlevit.cli import add_model_argument
from idlevit.errors import ToolkitError
from idlevit.names import DIGITS

#: ``--ort`` choices: one device, both, the best one here ("auto"), or no ONNX Runtime runner.
ORT_CHOICES = ("auto", "cpu", "cuda", "both", "none")


def add_backend_arguments(group: argparse._ArgumentGroup) -> None:
    """``--engine``, ``--ort`` and ``--threads``, as every command that runs backends takes them."""
    add_model_argument(group, "--engine", "built from the ONNX (needs TensorRT and a GPU)")
    group.add_argument(
        "--ort",
        choices=ORT_CHOICES,
        default="auto",
        help="ONNX Runtime device: auto (CUDA when onnxruntime-gpu and a GPU exist, else CPU), cpu, cuda, "
        "both, or none (engine only) (default auto)",
    )
    group.add_argument(
        "--threads", type=int, default=0, help="CPU threads of ONNX Runtime and PyTorch (default: their own choice)"
    )


def add_data_arguments(group: argparse._ArgumentGroup, split_help: str) -> None:
    """``--data`` and ``--split``, as every validate command takes them."""
    group.add_argument(
        "--data",
        default=DIGITS,
        help="real images: 'digits' (bundled scikit-learn digits) or an ImageFolder root (ROOT/val is used "
        "when present) (default digits)",
    )
    group.add_argument("--split", default="test", help=split_help)


def report_paths(json_path: Path) -> tuple[Path, Path]:
    """The JSON report ``--report`` names and the Markdown beside it (``.md``): a file name that is neither the
    other nor no name at all (``.``, ``/``, ``..``)."""
    if json_path.name in ("", ".", ".."):
        raise ToolkitError(f"--report {json_path} names a folder, not a file; give a file name ending in .json")
    md_path = json_path.with_suffix(".md")
    if json_path == md_path:
        raise ToolkitError(
            f"--report {json_path} would put the JSON and the Markdown report in one file; end it in .json"
        )
    return json_path, md_path
