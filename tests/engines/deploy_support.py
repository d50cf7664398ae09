"""Helpers of the deployment-package tests: Triton's own config message, engines with sidecars, DEPLOY.md paths."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from google.protobuf import text_format

from engines.package import main
from idlevit.cli import run_cli
from idlevit.fileio import sha256_file
from idlevit.metadata import read_metadata
from idlevit.sidecar import EngineSidecar, sidecar_path

#: What the package's files are named with; a word of DEPLOY.md with one of these suffixes, or with
#: a '/', is a path (or names a command's output, which must then be one the guide's commands write).
PATH_SUFFIXES = (".onnx", ".engine", ".plan", ".json", ".txt", ".pbtxt", ".so", ".md", ".cu", ".cpp", ".h")
#: Flags whose values are not paths (layer names carry '/').
NOT_PATHS = ("--layerPrecisions=",)


def triton_model_config():
    """Triton's own ``ModelConfig`` message module (tritonclient ships it; tests/run.sh installs it with --no-deps).

    Loaded by file path: ``tritonclient.grpc``'s package init needs grpcio, the message module does not.
    Without tritonclient the tests that need it fail instead of skipping: CI installs it, so a missing one
    is a broken set-up, and a skip would let the configs go unchecked unnoticed.
    """
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(
            "tritonclient is not installed, and Triton's ModelConfig is how these tests check the configs: run the "
            "tests with `bash tests/run.sh` (it installs it) or `pip install --no-deps tritonclient`",
            pytrace=False,
        )
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def parse_triton(path: Path):
    """The config parsed by protobuf's own text-format parser into Triton's ``ModelConfig`` (unknown fields fail)."""
    pb2 = triton_model_config()
    return text_format.Parse(path.read_text(), pb2.ModelConfig()), pb2


def fake_engine(
    folder: Path,
    onnx_path: Path,
    precision: str = "fp16",
    plugins: tuple[str, ...] = (),
    runtime: str = "tensorrt",
    name: str = "tiny_fp16.engine",
    built_from: Path | None = None,
) -> Path:
    """An engine file with the sidecar ``python -m export.trt`` writes (TensorRT cannot build here); ``built_from``
    is the graph TensorRT parsed when it is not ``onnx_path`` (the mixed-precision graph of FP16)."""
    engine = folder / name
    engine.write_bytes(b"serialized engine " + precision.encode())
    for lib in plugins:
        (folder / lib).write_bytes(b"\x7fELF")
    parsed = built_from or onnx_path
    EngineSidecar(
        engine=engine.name,
        engine_sha256=sha256_file(engine),
        runtime=runtime,
        runtime_version="10.3.0",
        gpu={"name": "Orin", "compute_capability": "8.7"},
        compute_capabilities=["8.7"],
        precision_plan={"precision": precision},
        profiles=[{"images": {"min": [1, 3, 64, 64], "opt": [4, 3, 64, 64], "max": [8, 3, 64, 64]}}],
        builder={},
        plugins=[{"file": lib, "sha256": sha256_file(folder / lib)} for lib in plugins],
        onnx=str(parsed),
        onnx_sha256=sha256_file(parsed),
        source_onnx=str(onnx_path),
        source_onnx_sha256=sha256_file(onnx_path),
        idlevit=json.loads(json.dumps(read_metadata(onnx_path).__dict__)),
    ).write(sidecar_path(engine))
    return engine


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``python -m engines.package argv`` in this process, as ``run_cli`` runs it: exit code, stdout, stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def deploy_paths(text: str) -> tuple[set[str], set[str]]:
    """(paths DEPLOY.md names, paths its commands create), relative to the package folder.

    Created: what ``--saveEngine=`` names and the plugin's ``build`` folder that cmake makes. Shell
    variables, absolute system paths and options are not package paths.
    """
    named: set[str] = set()
    created: set[str] = set()
    previous = ""
    for token in re.split(r"[\s`'\"(),;]+", text):
        module, previous = previous == "-m", token
        if module or token.startswith(NOT_PATHS):  # `python -m export.onnx` names a module
            continue
        value = token.split("=")[-1].rstrip(".:")
        if value.startswith("$PWD/"):
            value = value[len("$PWD/") :]
        if not value or value.startswith(("$", "/", "-", "<")):
            continue
        if "/" not in value and not value.endswith(PATH_SUFFIXES):
            continue
        if token.startswith("--saveEngine=") or value == "build" or value.startswith("build/"):
            created.add(value)
        else:
            named.add(value)
    return named - created, created


def assert_deploy_paths_exist(package: Path) -> tuple[set[str], set[str]]:
    """Every path DEPLOY.md names is in the package; every engine it creates lands in a folder of the package."""
    named, created = deploy_paths((package / "DEPLOY.md").read_text())
    missing = sorted(p for p in named if not (package / p).exists())
    assert not missing, f"DEPLOY.md names paths the package does not hold: {missing}"
    for path in created:
        if not path.startswith("build"):
            assert (package / path).parent.is_dir(), path
    return named, created
