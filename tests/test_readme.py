"""The README runs as written: every ``python -m`` line of its code blocks is run or parse-checked.

Lines run in README order in one folder, as a newcomer would type them. Only the user's own files
are stood in (``EXTERNAL``: ``my.pth`` is a copy of the bundled demo, ``cat.jpg`` a digits image,
``classes.txt`` ten names; datasets and checkpoints that are not on this machine): every other file a
line reads must have been written by an earlier line under that very name, so the README's names
are the names the commands write. Long runs get their shortest flags (``extra``). A line that cannot
run here (a dataset that is not on this machine, a GPU, the 10-minute demo recipe) is checked against
the command's own parser instead, and its files against what earlier lines wrote or declare they
write (``writes``: checked against the folder wherever the line runs to exit 0). ``LINES`` names every
README line and how it is treated: a README line missing from it, or an entry no longer in the
README, fails the test, so the two stay in step.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from engines.tensorrt import is_installed
from idlevit.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

HAS_RTX = is_installed("tensorrt-rtx")
HAS_TRT = is_installed("tensorrt")  # tensorrt-stubs leaves a bare "tensorrt" namespace behind: not TensorRT
HAS_MODELOPT = importlib.util.find_spec("modelopt") is not None


@dataclass(frozen=True)
class Line:
    """How one README line is treated: run (with ``extra`` flags, expecting ``code``) or parse-checked."""

    group: str  # lines of one group run in order in one folder
    run: bool = True
    extra: str = ""  # shortest flags for a long run
    code: int = 0
    why: str = ""  # why a line is only parse-checked
    writes: tuple[str, ...] = ()  # files later lines read that this line may not get to write here


def _built(runtime_installed: bool) -> int:
    """Exit code of a reduced-precision build: 0 when ModelOpt and the runtime are here, else 3."""
    return 0 if HAS_MODELOPT and runtime_installed else 3


#: The user's own files and folders: the only inputs no README line writes.
EXTERNAL = ("my.pth", "cat.jpg", "classes.txt", "/data/imagenet", "~/data/flowers", "deit_small.pth")
#: Flags whose value is a file a command writes, not one it reads.
OUTPUT_FLAGS = ("--out", "--out-dir", "--report")
NO_DATA = "the dataset is not on this machine"
GPU = "runs an engine: needs a CUDA GPU and the engine built on it"
TS = "--exporter torchscript --opset 17"  # the quicker tracer; the first export runs as written

LINES: dict[str, Line] = {
    # the newcomer's first command, as written
    "python -m export.onnx": Line("pipeline"),
    "python -m export.onnx --ckpt my.pth": Line("pipeline"),
    "python -m export.onnx --ckpt my.pth --optimize": Line("pipeline", extra=TS),
    "python -m export.onnx --ckpt my.pth --keep-rate 0.5 --out my_r05.onnx": Line("pipeline", extra=TS),
    "python -m export.onnx --ckpt my.pth --idle-layers 4..11 --keep-ratios "
    "0.7,0.7,0.7,0.49,0.49,0.49,0.343,0.343 --out my_custom.onnx": Line("pipeline", extra=TS),
    "python -m export.onnx --arch deit_small --random-init": Line("pipeline", extra=TS),
    "python -m export.onnx --ckpt my.pth --with-indices": Line("pipeline", extra=TS),
    "python -m validate.parity": Line("pipeline", extra="--num-images 16 --random-batches 1 --quiet"),
    "python -m validate.accuracy --onnx my.onnx": Line("pipeline", extra="--limit 64 --quiet"),
    "python -m validate.parity --ckpt my.pth --onnx my_indices.onnx --data /data/imagenet": Line(
        "pipeline", run=False, why=NO_DATA
    ),
    "python -m export.trt --onnx my_indices.onnx --fp16": Line(
        "pipeline", code=0 if HAS_TRT or HAS_RTX else 3, writes=("my_indices_fp16.engine",)
    ),
    "python -m validate.parity --onnx my_indices.onnx --engine my_indices_fp16.engine": Line(
        "pipeline", run=False, why=GPU
    ),
    "python -m validate.accuracy --onnx my_indices.onnx --engine my_indices_fp16.engine --data /data/imagenet": Line(
        "pipeline", run=False, why=GPU
    ),
    "python -m export.trt --fp16": Line(
        "pipeline", code=0 if HAS_TRT or HAS_RTX else 3, writes=("my_fp16_mixed.onnx", "my_fp16.engine")
    ),
    "python -m export.trt --onnx my.onnx --fp32 --runtime tensorrt-rtx --max-batch 64": Line(
        "pipeline", code=0 if HAS_RTX else 3
    ),
    "python -m export.trt --onnx my.onnx --int8": Line(
        "pipeline", code=_built(HAS_TRT or HAS_RTX), writes=("my_int8.onnx", "my_int8.engine")
    ),
    "python -m export.trt --onnx my.onnx --int8 --runtime tensorrt --trt-version 10.3": Line(
        "pipeline", code=_built(HAS_TRT)
    ),
    "python -m export.trt --onnx my.onnx --fp8 --runtime tensorrt-rtx --compute-capabilities 8.9": Line(
        "pipeline", code=_built(HAS_RTX)
    ),
    "python -m validate.accuracy --onnx my_int8.onnx --ckpt my.pth": Line(
        "pipeline", run=HAS_MODELOPT, extra="--limit 64 --quiet", why="ModelOpt is not installed"
    ),
    # on the device (here with PyTorch installed too; tests/test_device.py runs them without it)
    "python -m export.trt --onnx my.onnx --fp16": Line("pipeline", code=0 if HAS_TRT or HAS_RTX else 3),
    "python -m export.trt --onnx my_int8.onnx": Line(
        "pipeline",
        run=HAS_MODELOPT,
        extra="--check-images 64",
        code=0 if HAS_TRT or HAS_RTX else 3,
        why="ModelOpt is not installed, so no INT8 graph was written",
    ),
    "python -m validate.parity --onnx my_fp16_mixed.onnx": Line(
        "pipeline", extra="--num-images 16 --random-batches 1 --quiet"
    ),
    "python -m validate.parity --onnx my.onnx --engine my_fp16.engine --reference-onnx my.onnx": Line(
        "pipeline", run=False, why=GPU
    ),
    "python -m validate.accuracy --onnx my_int8.onnx": Line(
        "pipeline", run=HAS_MODELOPT, extra="--limit 64 --quiet", why="ModelOpt is not installed"
    ),
    "python -m engines.infer --engine my_fp16.engine cat.jpg": Line(
        "pipeline", run=HAS_TRT or HAS_RTX, why="no engine was built here"
    ),
    "python -m engines.package": Line("pipeline"),
    "python -m engines.package --onnx my.onnx --labels classes.txt --force": Line("pipeline"),
    "python -m engines.package --engine my_fp16.engine": Line(
        "pipeline", run=HAS_MODELOPT and (HAS_RTX or HAS_TRT), why="no engine was built here"
    ),
    "python -m engines.infer --onnx my.onnx cat.jpg": Line("pipeline"),
    "python -m benchmarks.quantization --no-speed": Line(
        "benchmarks",
        run=HAS_MODELOPT,
        extra="--plans gemms-inner --calib-images 64 --test-images 64 --quiet",
        why="ModelOpt is not installed",
    ),
    "python -m benchmarks.latency": Line(
        "benchmarks",
        extra="--arch deit_tiny --keep-rates 0.7 --batch-sizes 1 --repeats 1 --warmup 0 --quiet",
    ),
    "python -m benchmarks.latency --keep-rates 0.7 --graphs dynamo,torchscript,optimized --repeats 9": Line(
        "benchmarks", extra="--arch deit_tiny --img-size 64 --batch-sizes 1 --repeats 1 --warmup 0 --quiet"
    ),
    "python -m benchmarks.latency --keep-rates 0.7 --graphs dynamo,torchscript,optimized "
    "--backends pytorch,onnxruntime-cpu --repeats 15": Line(
        "benchmarks", extra="--arch deit_tiny --img-size 64 --batch-sizes 1 --repeats 1 --warmup 0 --quiet"
    ),
    "python -m benchmarks.latency --onnx my.onnx,my_ort.onnx": Line(
        "pipeline", extra="--batch-sizes 1 --repeats 1 --warmup 0 --quiet"
    ),
    "python -m benchmarks.profile --onnx my_ort.onnx --batch-size 1": Line("pipeline", extra="--runs 1"),
    "python -m idlevit.finetune --recipe demo": Line(
        "training", run=False, why="the demo recipe trains for minutes (and writes into the package)"
    ),
    "python -m idlevit.finetune --recipe demo --out-dir /tmp/demo": Line(
        "training", run=False, why="the demo recipe trains for minutes"
    ),
    "python -m idlevit.finetune --dense --out teacher.pth": Line("training", extra="--epochs 1 --quiet"),
    "python -m idlevit.finetune --teacher teacher.pth --out idlevit.pth": Line("training", extra="--epochs 1 --quiet"),
    "python -m idlevit.finetune --teacher teacher.pth --cut-loss none --keep-rate 0.5 --out r05.pth": Line(
        "training", extra="--epochs 1 --quiet"
    ),
    "python -m idlevit.finetune --dataset ~/data/flowers --init deit_small.pth --dense --out t.pth": Line(
        "training", run=False, why=NO_DATA
    ),
}


def readme_commands(text: str) -> list[str]:
    """Every ``python -m`` command in the README's shell code blocks, in order, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            code = re.split(r"\s+#", line, maxsplit=1)[0].strip()
            commands += [part.strip() for part in code.split("&&") if part.strip().startswith("python -m ")]
    return commands


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def test_every_readme_command_is_covered() -> None:
    assert COMMANDS, "no python -m command found in the README"
    unknown = [c for c in COMMANDS if c not in LINES]
    stale = [c for c in LINES if c not in COMMANDS]
    assert not unknown, f"README lines this test does not know (add them to LINES): {unknown}"
    assert not stale, f"LINES entries no longer in the README: {stale}"


def _stand_ins(folder: Path) -> None:
    """The user's files the README names: a checkpoint, an image, class names."""
    import numpy as np
    from PIL import Image

    from idlevit.checkpoint import DEMO_CHECKPOINT
    from idlevit.data import digits_split

    shutil.copy(DEMO_CHECKPOINT, folder / "my.pth")
    images, _labels = digits_split("test", 32)
    pixels = (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(folder / "cat.jpg", quality=95)
    (folder / "classes.txt").write_text("".join(f"digit {i}\n" for i in range(10)), encoding="utf-8")


def _reads(command: str) -> list[str]:
    """The files and folders a line names as inputs: its path-like words, comma lists split, outputs left out."""
    words, reads = shlex.split(command)[3:], []
    for i, word in enumerate(words):
        if word.startswith("--") or (i and words[i - 1] in OUTPUT_FLAGS):
            continue
        reads += [part for part in word.split(",") if re.search(r"\.(onnx|engine|plan|pth|jpg|png|txt)$|^[/~]", part)]
    return reads


def _files(folder: Path) -> set[str]:
    """Every file and folder under ``folder``, by its path relative to it."""
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*")}


def _parse_only(command: str) -> None:
    """The line is accepted by its command's parser (flags, choices, positionals)."""
    words = shlex.split(command)
    module = importlib.import_module(words[2])
    parser = module.build_parser()
    try:
        parser.parse_args(words[3:])
    except SystemExit as stop:
        pytest.fail(f"`{command}` is refused by its parser (exit {stop.code})")
    except ToolkitError as err:  # the parser checks that model files exist: this line's are external inputs
        if "does not exist" not in str(err):
            raise


def _run(command: str, line: Line, folder: Path) -> None:
    words = shlex.split(command)
    args = words[3:] + shlex.split(line.extra)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("IDLEVIT_STATE_DIR", None)
    result = subprocess.run(
        [sys.executable, "-m", words[2], *args], cwd=folder, env=env, capture_output=True, text=True, timeout=1200
    )
    shown = f"`{command} {line.extra}`".replace(" `", "`")
    assert result.returncode == line.code, f"{shown} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, f"{shown}:\n{result.stderr}"
    if line.code == 0:
        missing = [name for name in line.writes if not (folder / name).exists()]
        assert not missing, f"{shown} did not write {missing}, which LINES says it writes:\n{result.stdout}"


@pytest.mark.parametrize("group", sorted({line.group for line in LINES.values()}))
def test_readme_commands_run_as_written(group: str, tmp_path: Path) -> None:
    _stand_ins(tmp_path)
    declared: set[str] = set()
    for command in COMMANDS:
        line = LINES.get(command)
        if line is None or line.group != group:
            continue
        written = _files(tmp_path) | declared
        unknown = [name for name in _reads(command) if name not in EXTERNAL and name not in written]
        assert not unknown, f"`{command}` reads {unknown}, which no earlier README line writes"
        declared |= set(line.writes)
        if line.run:
            _run(command, line, tmp_path)
        else:
            _parse_only(command)
    if group == "pipeline":
        # what the lines promise: the demo export in the working folder, the package, top-5 output
        assert (tmp_path / "idlevit_deit_micro_digits_ratio0.7.onnx").is_file()
        assert (tmp_path / "my.onnx").is_file() and (tmp_path / "my_indices.onnx").is_file()
        assert (tmp_path / "my_deploy" / "DEPLOY.md").is_file()
        if HAS_RTX or HAS_TRT:  # one engine name for every runtime
            assert (tmp_path / "my_fp16.engine").is_file() and (tmp_path / "my_indices_fp16.engine").is_file()
            assert not list(tmp_path.glob("*_rtx*"))
